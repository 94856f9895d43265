package api

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// TestClassTable pins class → HTTP status → CLI exit code, and that every
// class survives the trip through the wire error and back.
func TestClassTable(t *testing.T) {
	want := map[Class]struct{ status, exit int }{
		ClassNotFound:           {http.StatusNotFound, 10},
		ClassAlreadyExists:      {http.StatusConflict, 11},
		ClassBadRequest:         {http.StatusBadRequest, 12},
		ClassConflict:           {http.StatusConflict, 13},
		ClassUnavailable:        {http.StatusServiceUnavailable, 14},
		ClassFailedPrecondition: {http.StatusPreconditionFailed, 15},
		ClassNotImplemented:     {http.StatusNotImplemented, 16},
		ClassCanceled:           {499, 17},
		ClassPermissionDenied:   {http.StatusForbidden, 18},
		ClassInternal:           {http.StatusInternalServerError, 1},
	}
	if len(want) != len(Classes()) {
		t.Fatalf("table covers %d classes, Classes() has %d", len(want), len(Classes()))
	}
	for _, c := range Classes() {
		w, ok := want[c]
		if !ok {
			t.Fatalf("class %s missing from the table", c)
		}
		if c.HTTPStatus() != w.status || c.ExitCode() != w.exit {
			t.Errorf("%s: status %d exit %d, want %d %d", c, c.HTTPStatus(), c.ExitCode(), w.status, w.exit)
		}
		wrapped := fmt.Errorf("doing x: %w", c.Sentinel())
		if ClassOf(wrapped) != c {
			t.Errorf("ClassOf(wrapped %s) = %s", c, ClassOf(wrapped))
		}
		wire := &Error{Class: c, Message: "m"}
		if !errors.Is(wire, c.Sentinel()) {
			t.Errorf("wire error of class %s does not match its sentinel", c)
		}
	}
	if ClassOf(errors.New("plain")) != ClassInternal {
		t.Error("an unclassed error must be internal")
	}
}

func TestHintSurvivesWrapping(t *testing.T) {
	err := fmt.Errorf("outer: %w", Hinted(Errorf(ErrNotFound, "image %q", "x"), "kiln image list"))
	if HintOf(err) != "kiln image list" || ClassOf(err) != ClassNotFound {
		t.Fatalf("hint %q class %s", HintOf(err), ClassOf(err))
	}
}

func TestValidateName(t *testing.T) {
	good := []string{"a", "box", "my-vm-2", "0abc", strings.Repeat("a", 63)}
	bad := []string{"", "-a", "A", "a_b", "a/b", "..", "a.b", strings.Repeat("a", 64), "a b", "é"}
	for _, n := range good {
		if err := ValidateName("VM", n); err != nil {
			t.Errorf("%q rejected: %v", n, err)
		}
	}
	for _, n := range bad {
		if err := ValidateName("VM", n); !errors.Is(err, ErrBadRequest) {
			t.Errorf("%q accepted or wrong class: %v", n, err)
		}
	}
}

func TestParseSize(t *testing.T) {
	good := map[string]int64{"1": 1, "512M": 512 << 20, "4G": 4 << 30, "4GiB": 4 << 30, "2gb": 2 << 30, "10K": 10 << 10, "1T": 1 << 40}
	for in, want := range good {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1G", "G", "1.5G", "1X", "99999999999T"} {
		if _, err := ParseSize(in); !errors.Is(err, ErrBadRequest) {
			t.Errorf("ParseSize(%q) accepted: %v", in, err)
		}
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"box", "../x", "a/b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if ValidateName("VM", s) == nil && (strings.ContainsAny(s, "/.\x00") || len(s) > 63 || s == "") {
			t.Fatalf("unsafe name %q accepted", s)
		}
	})
}
