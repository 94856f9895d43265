// Package guest is the host side of the channel to a VM's agent: the
// transports that reach the agent's SSH server (SerialChannel: a
// virtio-serial port behind QEMU's chardev socket, multiplexed with yamux)
// and the SSH client the daemon uses over any of them (Client: exec with
// PTY and signals, health, poweroff, raw streams for `kiln vm proxy`).
//
// The daemon generates each VM's host key before boot (NewKeyPair) and puts
// it in the per-VM config, so the client pins it: there is no trust on
// first use.
package guest

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/kilnvm/kiln/internal/api"
)

// KeyPair is an ed25519 SSH key.
type KeyPair struct {
	// PrivatePEM is the private key in OpenSSH PEM form
	// ("-----BEGIN OPENSSH PRIVATE KEY-----").
	PrivatePEM []byte
	// AuthorizedKey is the public key as an authorized_keys line, without
	// a trailing newline.
	AuthorizedKey string
	Signer        ssh.Signer
	Public        ssh.PublicKey
}

// NewKeyPair generates an ed25519 key pair.
func NewKeyPair() (KeyPair, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return KeyPair{}, fmt.Errorf("generate ed25519 key: %w", err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "kiln")
	if err != nil {
		return KeyPair{}, fmt.Errorf("encode private key: %w", err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return KeyPair{}, fmt.Errorf("ssh signer: %w", err)
	}
	return KeyPair{
		PrivatePEM:    pem.EncodeToMemory(block),
		AuthorizedKey: strings.TrimSpace(string(ssh.MarshalAuthorizedKey(signer.PublicKey()))),
		Signer:        signer,
		Public:        signer.PublicKey(),
	}, nil
}

// ParseSigner parses a private key in PEM form (OpenSSH or PKCS#8).
func ParseSigner(pemBytes []byte) (ssh.Signer, error) {
	s, err := ssh.ParsePrivateKey(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("parse private key: %v: %w", err, api.ErrBadRequest)
	}
	return s, nil
}

// ParsePublicKey parses an authorized_keys line ("ssh-ed25519 AAAA... c").
func ParsePublicKey(authorizedKey string) (ssh.PublicKey, error) {
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(authorizedKey))
	if err != nil {
		return nil, fmt.Errorf("parse public key: %v: %w", err, api.ErrBadRequest)
	}
	return k, nil
}
