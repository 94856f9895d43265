package image

import (
	"errors"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/kilnvm/kiln/internal/api"
)

func TestReadAptSources(t *testing.T) {
	fsys := fstest.MapFS{
		"etc/apt/sources.list": {Data: []byte(`# comment
deb http://ftp.example.org/debian bookworm main contrib # trailing
deb-src http://ftp.example.org/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] https://mirror.example/debian/ trixie main
deb [ trusted=yes ] file:/srv/repo ./
`)},
		"etc/apt/sources.list.d/debian.sources": {Data: []byte(`Types: deb deb-src
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb
URIs: http://disabled.example/debian
Suites: sid
Enabled: no
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 -----END PGP PUBLIC KEY BLOCK-----
`)},
		"etc/apt/sources.list.d/other.list":                 {Data: []byte("deb http://other.example/ubuntu jammy main\n")},
		"etc/apt/sources.list.d/old.list.disabled-by-admin": {Data: []byte("deb http://never.example/debian bookworm main\n")},
	}
	got, err := ReadAptSources(fsys)
	if err != nil {
		t.Fatal(err)
	}
	want := []AptSource{
		{URI: "http://ftp.example.org/debian", Suites: []string{"bookworm"}, Components: []string{"main", "contrib"}, File: "etc/apt/sources.list"},
		{URI: "https://mirror.example/debian/", Suites: []string{"trixie"}, Components: []string{"main"}, File: "etc/apt/sources.list"},
		{URI: "file:/srv/repo", Suites: []string{"./"}, Components: []string{}, File: "etc/apt/sources.list"},
		{URI: "http://deb.debian.org/debian", Suites: []string{"bookworm", "bookworm-updates"}, Components: []string{"main"}, File: "etc/apt/sources.list.d/debian.sources"},
		{URI: "http://deb.debian.org/debian-security", Suites: []string{"bookworm-security"}, Components: []string{"main"}, File: "etc/apt/sources.list.d/debian.sources"},
		{URI: "http://other.example/ubuntu", Suites: []string{"jammy"}, Components: []string{"main"}, File: "etc/apt/sources.list.d/other.list"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got\n%+v\nwant\n%+v", got, want)
	}
}

func TestHostDebianMirror(t *testing.T) {
	deb822 := func(uri, suites string) fstest.MapFS {
		return fstest.MapFS{"etc/apt/sources.list.d/debian.sources": {Data: []byte(
			"Types: deb\nURIs: " + uri + "\nSuites: " + suites + "\nComponents: main\n")}}
	}
	cases := []struct {
		name  string
		fsys  fstest.MapFS
		suite string
		want  string
	}{
		{"ExactSuite", deb822("http://deb.debian.org/debian", "bookworm bookworm-updates"), "bookworm", "http://deb.debian.org/debian"},
		{"OtherSuiteSameArchive", deb822("http://deb.debian.org/debian/", "bookworm"), "trixie", "http://deb.debian.org/debian"},
		{"SecurityOnly", deb822("http://deb.debian.org/debian-security", "bookworm-security"), "bookworm", ""},
		{"UpdatesOnly", deb822("http://deb.debian.org/debian", "bookworm-updates"), "trixie", ""},
		{"OneLineWithOptions", fstest.MapFS{"etc/apt/sources.list": {Data: []byte(
			"deb [signed-by=/k.gpg] http://mirror.local/debian bookworm main\n")}}, "bookworm", "http://mirror.local/debian"},
		{"PreferExactOverFirst", fstest.MapFS{"etc/apt/sources.list": {Data: []byte(
			"deb http://a.example/debian bookworm main\ndeb http://b.example/debian trixie main\n")}}, "trixie", "http://b.example/debian"},
		{"NotDebian", fstest.MapFS{"etc/apt/sources.list": {Data: []byte("deb http://x.example/ubuntu jammy main\n")}}, "bookworm", ""},
		{"Nothing", fstest.MapFS{}, "bookworm", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := HostDebianMirror(c.fsys, c.suite)
			if c.want == "" {
				if !errors.Is(err, api.ErrFailedPrecondition) || api.HintOf(err) == "" {
					t.Fatalf("got %q, %v; want a failed precondition with a hint", got, err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
		})
	}
}

func TestDebootstrapArgsAndValidation(t *testing.T) {
	host := func(string) (string, error) { return "http://deb.debian.org/debian", nil }
	d, err := Debootstrap{Suite: "bookworm", Include: []string{"openssh-server", "udev", "g++"}}.normalize(host)
	if err != nil {
		t.Fatal(err)
	}
	got := d.args("/var/lib/kiln/images/.staging-x/tree")
	want := []string{"--variant=minbase", "--include=systemd-sysv,udev,openssh-server,g++",
		"bookworm", "/var/lib/kiln/images/.staging-x/tree", "http://deb.debian.org/debian"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("args %q, want %q", got, want)
	}

	bad := []Debootstrap{
		{Suite: ""},
		{Suite: "--foreign"},
		{Suite: "bookworm main"},
		{Suite: "bookworm", Variant: "--arch=arm64"},
		{Suite: "bookworm", Include: []string{"a,b"}},
		{Suite: "bookworm", Include: []string{"-x"}},
		{Suite: "bookworm", Mirror: "ftp://old.example/debian"},
		{Suite: "bookworm", Mirror: "--keyring=/x"},
		{Suite: "bookworm", Mirror: "http://a b/debian"},
		{Suite: "bookworm", Mirror: "http:///debian"},
	}
	for _, b := range bad {
		if _, err := b.normalize(host); !errors.Is(err, api.ErrBadRequest) {
			t.Errorf("%+v: got %v, want bad request", b, err)
		}
	}
	noHost := func(string) (string, error) { return "", api.ErrFailedPrecondition }
	if _, err := (Debootstrap{Suite: "bookworm"}).normalize(noHost); !errors.Is(err, api.ErrFailedPrecondition) {
		t.Errorf("no host mirror: %v", err)
	}
	if d, err := (Debootstrap{Suite: "bookworm", Mirror: "file:///srv/mirror"}).normalize(noHost); err != nil || !strings.HasPrefix(d.Mirror, "file:") {
		t.Errorf("file mirror: %+v, %v", d, err)
	}
}
