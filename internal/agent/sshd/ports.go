package sshd

import (
	"encoding/json"

	"golang.org/x/crypto/ssh"
)

// replyPorts answers proto.RequestPorts with the guest's listening sockets.
func (s *Server) replyPorts(req *ssh.Request) {
	if s.cfg.Ports == nil {
		_ = req.Reply(false, []byte("listing ports is not supported here"))
		return
	}
	ps, err := s.cfg.Ports()
	if err != nil {
		_ = req.Reply(false, []byte(err.Error()))
		return
	}
	b, err := json.Marshal(ps)
	if err != nil {
		_ = req.Reply(false, []byte(err.Error()))
		return
	}
	_ = req.Reply(true, b)
}
