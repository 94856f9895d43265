package image

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/kilnvm/kiln/internal/api"
)

// Debootstrap describes a Debian (or derivative) root filesystem built with
// debootstrap.
type Debootstrap struct {
	// Suite is the release: "bookworm", "trixie", "stable".
	Suite string
	// Mirror is the archive URL; empty means the host's own Debian source
	// from its apt configuration.
	Mirror string
	// Include lists packages to add to the base set (BaseDebootstrapPackages).
	Include []string
	// Variant is debootstrap's --variant; empty means "minbase".
	Variant string
}

// BaseDebootstrapPackages are always included: systemd-sysv makes systemd
// the init (/sbin/init), and udev lets systemd see devices, without which
// every unit bound to a device (the serial getty on the console, fstab
// entries) waits out its 90 s job timeout. /bin/sh (dash) and the rest of
// a usable system come with minbase itself.
func BaseDebootstrapPackages() []string { return []string{"systemd-sysv", "udev"} }

var (
	suiteRE   = regexp.MustCompile(`^[a-z][a-z0-9.-]{0,63}$`)
	packageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9+.-]{0,127}$`)
)

func validVariant(v string) bool {
	switch v {
	case "minbase", "buildd", "fakechroot":
		return true
	}
	return false
}

// validate checks d and fills its defaults; mirror is the host's mirror,
// consulted only when d.Mirror is empty.
func (d Debootstrap) normalize(hostMirror func(suite string) (string, error)) (Debootstrap, error) {
	if !suiteRE.MatchString(d.Suite) {
		return d, fmt.Errorf("debootstrap suite %q: want a release name such as bookworm: %w", d.Suite, api.ErrBadRequest)
	}
	if d.Variant == "" {
		d.Variant = "minbase"
	}
	if !validVariant(d.Variant) {
		return d, fmt.Errorf("debootstrap variant %q: want minbase, buildd or fakechroot: %w", d.Variant, api.ErrBadRequest)
	}
	for _, p := range d.Include {
		if !packageRE.MatchString(p) {
			return d, fmt.Errorf("debootstrap package %q: not a valid Debian package name: %w", p, api.ErrBadRequest)
		}
	}
	if d.Mirror == "" {
		m, err := hostMirror(d.Suite)
		if err != nil {
			return d, err
		}
		d.Mirror = m
	}
	if err := checkMirror(d.Mirror); err != nil {
		return d, err
	}
	return d, nil
}

func checkMirror(m string) error {
	u, err := url.Parse(m)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https" && u.Scheme != "file") ||
		strings.ContainsAny(m, " \t\n") || (u.Scheme != "file" && u.Host == "") {
		return fmt.Errorf("debootstrap mirror %q: want an http, https or file URL: %w", m, api.ErrBadRequest)
	}
	return nil
}

// args is the debootstrap command line for building into target.
func (d Debootstrap) args(target string) []string {
	include := append(BaseDebootstrapPackages(), d.Include...)
	seen := map[string]bool{}
	var pkgs []string
	for _, p := range include {
		if !seen[p] {
			seen[p] = true
			pkgs = append(pkgs, p)
		}
	}
	return []string{
		"--variant=" + d.Variant,
		"--include=" + strings.Join(pkgs, ","),
		// debootstrap has no "--"; none of these can start with "-": the
		// suite and mirror are validated and target is an absolute path.
		d.Suite, target, d.Mirror,
	}
}

// AptSource is one "deb" line or deb822 stanza of the apt configuration.
type AptSource struct {
	URI        string
	Suites     []string
	Components []string
	File       string // where it was found, relative to the apt root
}

// ReadAptSources parses the apt sources under fsys (which stands for "/"):
// etc/apt/sources.list, etc/apt/sources.list.d/*.list (one-line format)
// and etc/apt/sources.list.d/*.sources (deb822). Only binary ("deb")
// entries that are enabled are returned, in file order.
func ReadAptSources(fsys fs.FS) ([]AptSource, error) {
	var out []AptSource
	// apt reads sources.list, then sources.list.d in name order with both
	// formats interleaved.
	var parts []string
	for _, pat := range []string{"etc/apt/sources.list.d/*.list", "etc/apt/sources.list.d/*.sources"} {
		m, err := fs.Glob(fsys, pat)
		if err != nil {
			return nil, err
		}
		parts = append(parts, m...)
	}
	sort.Strings(parts)
	files := append([]string{"etc/apt/sources.list"}, parts...)
	for _, f := range files {
		data, err := fs.ReadFile(fsys, f)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("read apt sources %s: %w", f, err)
		}
		if strings.HasSuffix(f, ".sources") {
			out = append(out, parseDeb822(string(data), f)...)
		} else {
			out = append(out, parseOneLine(string(data), f)...)
		}
	}
	return out, nil
}

// parseOneLine reads "deb [opts] URI SUITE [COMPONENT...]" lines.
func parseOneLine(data, file string) []AptSource {
	var out []AptSource
	sc := bufio.NewScanner(strings.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = line[:i]
		}
		f := strings.Fields(line)
		if len(f) < 3 || f[0] != "deb" {
			continue
		}
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			// Options may contain spaces: skip to the closing bracket.
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, AptSource{URI: f[0], Suites: []string{f[1]}, Components: f[2:], File: file})
	}
	return out
}

// parseDeb822 reads stanzas of "Types: deb", "URIs:", "Suites:",
// "Components:", "Enabled:" fields separated by blank lines.
func parseDeb822(data, file string) []AptSource {
	var out []AptSource
	flush := func(st map[string]string) {
		if len(st) == 0 {
			return
		}
		if strings.EqualFold(strings.TrimSpace(st["enabled"]), "no") {
			return
		}
		if !contains(strings.Fields(st["types"]), "deb") {
			return
		}
		for _, uri := range strings.Fields(st["uris"]) {
			out = append(out, AptSource{URI: uri, Suites: strings.Fields(st["suites"]),
				Components: strings.Fields(st["components"]), File: file})
		}
	}
	st := map[string]string{}
	last := ""
	sc := bufio.NewScanner(strings.NewReader(data))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush(st)
			st, last = map[string]string{}, ""
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last != "" { // continuation of a multi-line field
				st[last] += " " + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if ok {
				last = strings.ToLower(strings.TrimSpace(k))
				st[last] = strings.TrimSpace(v)
			}
		}
	}
	flush(st)
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// HostDebianMirror picks, from the apt sources under fsys, the Debian
// archive to debootstrap suite from: a source that lists suite itself is
// best; else the first that looks like a main Debian archive (its path
// ends in /debian and it is not a security or updates-only source). The
// result is api.ErrFailedPrecondition when there is none, with a hint to
// pass a mirror.
func HostDebianMirror(fsys fs.FS, suite string) (string, error) {
	srcs, err := ReadAptSources(fsys)
	if err != nil {
		return "", err
	}
	usable := func(s AptSource) bool {
		u, err := url.Parse(s.URI)
		return err == nil && (u.Scheme == "http" || u.Scheme == "https" || u.Scheme == "file")
	}
	for _, s := range srcs {
		if usable(s) && contains(s.Suites, suite) {
			return strings.TrimSuffix(s.URI, "/"), nil
		}
	}
	for _, s := range srcs {
		u, _ := url.Parse(s.URI)
		if !usable(s) || path.Base(strings.TrimSuffix(u.Path, "/")) != "debian" {
			continue
		}
		plain := false
		for _, su := range s.Suites {
			if !strings.Contains(su, "-") && !strings.Contains(su, "/") {
				plain = true
			}
		}
		if plain {
			return strings.TrimSuffix(s.URI, "/"), nil
		}
	}
	return "", api.Hinted(
		fmt.Errorf("no Debian archive for %q in the host's apt sources: %w", suite, api.ErrFailedPrecondition),
		"pass a mirror, e.g. http://deb.debian.org/debian")
}
