package xdpguard

import "github.com/statemesh/statemesh/internal/dataplane/pkttest"

// Frames for BPF_PROG_TEST_RUN (package pkttest, shared with the other
// eBPF package's tests).
var (
	ether               = pkttest.Ether
	ipPacket            = pkttest.IPPacket
	udp                 = pkttest.UDP
	tcp                 = pkttest.TCP
	handshakeInitiation = pkttest.HandshakeInitiation
	transportData       = pkttest.TransportData
	handshakeResponse   = pkttest.HandshakeResponse
)

// Namespaces and CPU time (package pkttest too).
var (
	sh        = pkttest.Sh
	inNS      = pkttest.InNS
	ksoftirqd = pkttest.Ksoftirqd
	schedNS   = pkttest.TaskCPU
	median    = pkttest.Median
)

const (
	tcpSYN = pkttest.TCPSYN
	tcpACK = pkttest.TCPACK
)
