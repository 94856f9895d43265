// Package api holds kiln's wire types, error classes and input validators.
// It is a leaf: it imports only the standard library, so every other
// package (daemon, client, CLI, agent) can share it.
package api

import (
	"errors"
	"fmt"
	"net/http"
)

// Class is the kind of an error, carried on the wire as a short code.
type Class string

// The error classes. Packages wrap these with %w and context; the daemon
// maps them to HTTP status once at its edge, the client maps them back, and
// the CLI maps them to exit codes.
const (
	ClassNotFound           Class = "not_found"
	ClassAlreadyExists      Class = "already_exists"
	ClassBadRequest         Class = "bad_request"
	ClassConflict           Class = "conflict"
	ClassUnavailable        Class = "unavailable"
	ClassInternal           Class = "internal"
	ClassFailedPrecondition Class = "failed_precondition"
	ClassNotImplemented     Class = "not_implemented"
	ClassCanceled           Class = "canceled"
	ClassPermissionDenied   Class = "permission_denied"
)

// Sentinel errors, one per class. Wrap them: fmt.Errorf("vm %q: %w", n, ErrNotFound).
var (
	ErrNotFound           = &classError{ClassNotFound}
	ErrAlreadyExists      = &classError{ClassAlreadyExists}
	ErrBadRequest         = &classError{ClassBadRequest}
	ErrConflict           = &classError{ClassConflict}
	ErrUnavailable        = &classError{ClassUnavailable}
	ErrInternal           = &classError{ClassInternal}
	ErrFailedPrecondition = &classError{ClassFailedPrecondition}
	ErrNotImplemented     = &classError{ClassNotImplemented}
	ErrCanceled           = &classError{ClassCanceled}
	ErrPermissionDenied   = &classError{ClassPermissionDenied}
)

type classError struct{ class Class }

func (e *classError) Error() string { return string(e.class) }

// Classes lists every class, for tables and tests.
func Classes() []Class {
	return []Class{ClassNotFound, ClassAlreadyExists, ClassBadRequest, ClassConflict,
		ClassUnavailable, ClassInternal, ClassFailedPrecondition, ClassNotImplemented,
		ClassCanceled, ClassPermissionDenied}
}

// ClassOf returns the outermost class found in err's chain, or ClassInternal.
func ClassOf(err error) Class {
	if err == nil {
		return ""
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Class
	}
	var ce *classError
	if errors.As(err, &ce) {
		return ce.class
	}
	return ClassInternal
}

// Sentinel returns the sentinel error of a class.
func (c Class) Sentinel() error {
	switch c {
	case ClassNotFound:
		return ErrNotFound
	case ClassAlreadyExists:
		return ErrAlreadyExists
	case ClassBadRequest:
		return ErrBadRequest
	case ClassConflict:
		return ErrConflict
	case ClassUnavailable:
		return ErrUnavailable
	case ClassFailedPrecondition:
		return ErrFailedPrecondition
	case ClassNotImplemented:
		return ErrNotImplemented
	case ClassCanceled:
		return ErrCanceled
	case ClassPermissionDenied:
		return ErrPermissionDenied
	}
	return ErrInternal
}

// HTTPStatus is the status the daemon answers with for a class.
func (c Class) HTTPStatus() int {
	switch c {
	case ClassNotFound:
		return http.StatusNotFound
	case ClassAlreadyExists, ClassConflict:
		return http.StatusConflict
	case ClassBadRequest:
		return http.StatusBadRequest
	case ClassUnavailable:
		return http.StatusServiceUnavailable
	case ClassFailedPrecondition:
		return http.StatusPreconditionFailed
	case ClassNotImplemented:
		return http.StatusNotImplemented
	case ClassCanceled:
		return 499
	case ClassPermissionDenied:
		return http.StatusForbidden
	}
	return http.StatusInternalServerError
}

// ExitCode is the exit status of the CLI for an error of this class. Codes
// start at 10 so they do not collide with a guest command's own small codes
// in the common cases; `vm run`/`vm exec` exit with the guest's code instead.
func (c Class) ExitCode() int {
	switch c {
	case ClassNotFound:
		return 10
	case ClassAlreadyExists:
		return 11
	case ClassBadRequest:
		return 12
	case ClassConflict:
		return 13
	case ClassUnavailable:
		return 14
	case ClassFailedPrecondition:
		return 15
	case ClassNotImplemented:
		return 16
	case ClassCanceled:
		return 17
	case ClassPermissionDenied:
		return 18
	}
	return 1
}

// Error is the error body on the wire, and the error the client returns.
type Error struct {
	Class   Class  `json:"class"`
	Message string `json:"message"`
	// OpID is the operation or request id; it is on every daemon log line
	// about this request, so `journalctl | grep` finds the story.
	OpID string `json:"op_id,omitempty"`
	// Stage names the create/delete stage that failed, where there is one.
	Stage string `json:"stage,omitempty"`
	// Hint says what to do next, where kiln knows.
	Hint string `json:"hint,omitempty"`
}

func (e *Error) Error() string {
	s := e.Message
	if e.Stage != "" {
		s = e.Stage + ": " + s
	}
	return s
}

// Unwrap makes errors.Is(err, api.ErrNotFound) work on wire errors.
func (e *Error) Unwrap() error { return e.Class.Sentinel() }

// Hinted attaches a hint to err; the daemon puts it in the wire error.
func Hinted(err error, hint string) error { return &hintError{err: err, hint: hint} }

type hintError struct {
	err  error
	hint string
}

func (h *hintError) Error() string { return h.err.Error() }
func (h *hintError) Unwrap() error { return h.err }

// HintOf returns the outermost hint attached to err, or "".
func HintOf(err error) string {
	var h *hintError
	if errors.As(err, &h) {
		return h.hint
	}
	var ae *Error
	if errors.As(err, &ae) {
		return ae.Hint
	}
	return ""
}

// Errorf formats an error of a class: api.Errorf(api.ErrBadRequest, "bad name %q", n).
func Errorf(class error, format string, args ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), class)
}
