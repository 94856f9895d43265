package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"

	"github.com/kilnvm/kiln/internal/agent/proto"
)

// ServeVsock serves the control channel on AF_VSOCK port proto.VsockPort:
// one SSH connection per accepted connection, until ctx ends. Listening is
// retried with back-off, because the vsock transport module may still be
// loading.
func ServeVsock(ctx context.Context, serve ConnServer, logger *slog.Logger) error {
	backoff := minBackoff
	for {
		// Any CID: the host connects to whatever CID the VM was given.
		l, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, proto.VsockPort, nil)
		if err == nil {
			return serveListener(ctx, l, serve, logger)
		}
		logger.Info("vsock listen failed, retrying", "err", err)
		if serr := sleepCtx(ctx, backoff); serr != nil {
			return fmt.Errorf("listen on vsock port %d: %w (last error: %v)", proto.VsockPort, serr, err)
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

func serveListener(ctx context.Context, l net.Listener, serve ConnServer, logger *slog.Logger) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var conns sync.WaitGroup
	defer conns.Wait()
	logger.Info("serving the control channel", "addr", l.Addr().String())
	for {
		conn, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("accept on %s: %w", l.Addr(), err)
			}
			logger.Warn("accept", "err", err)
			if err := sleepCtx(ctx, minBackoff); err != nil {
				return err
			}
			continue
		}
		conns.Go(func() {
			defer func() {
				if r := recover(); r != nil {
					logger.Error("panic serving a control connection", "panic", r)
				}
			}()
			if err := serve(ctx, conn); err != nil {
				logger.Warn("control connection", "err", err)
			}
		})
	}
}
