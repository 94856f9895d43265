package agent

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"log/slog"
)

func ed25519Key() (ed25519.PublicKey, ed25519.PrivateKey, error) {
	return ed25519.GenerateKey(rand.Reader)
}

func pemEncode(b *pem.Block) []byte { return pem.EncodeToMemory(b) }

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }
