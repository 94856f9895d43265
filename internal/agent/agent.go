// Package agent is the guest side of kiln: the kiln-agent binary's init
// and service modes.
//
// Init mode runs as /init of the initramfs: it loads the kernel modules the
// initramfs lists, reads the per-VM config, mounts the root disk and then
// either executes the image's own init (a systemd image with the kiln unit,
// which starts the service mode) or stays PID 1, reaping orphans and
// serving the control channel itself.
//
// Service mode serves the control channel — SSH (package sshd) over a
// virtio-serial port multiplexed with yamux, or over vsock — until the VM
// powers off. Every command runs through one reaper (package reaper), in
// both modes, so exit statuses reach their exec handlers even when the
// agent reaps orphans as PID 1.
package agent
