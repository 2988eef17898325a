package firewall

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// The kernel's nftables ruleset generation (include/uapi/linux/netfilter/
// nf_tables.h): every committed nftables transaction in a network namespace
// moves it on, whoever commits it and whichever table it touches. Reading
// it is one netlink round trip; listing the table execs nft.
var (
	getGen = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETGEN)
	newGen = netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWGEN)
)

// readGeneration returns the nftables ruleset generation of the calling
// thread's network namespace: the namespace nft, exec'd from the same
// thread, would change. The socket is opened for the one request, as nft
// would be started for it.
func readGeneration(ctx context.Context) (uint32, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, nil)
	if err != nil {
		return 0, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	defer c.Close()
	if d, ok := ctx.Deadline(); ok {
		if err := c.SetDeadline(d); err != nil {
			return 0, fmt.Errorf("setting a netlink deadline: %w", err)
		}
	}
	// struct nfgenmsg: family AF_UNSPEC, version NFNETLINK_V0, res_id 0.
	req := netlink.Message{
		Header: netlink.Header{Type: getGen, Flags: netlink.Request | netlink.Acknowledge},
		Data:   []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0},
	}
	msgs, err := c.Execute(req)
	if err != nil {
		return 0, fmt.Errorf("reading the nftables generation: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != newGen || len(m.Data) < 4 {
			continue
		}
		ad, err := netlink.NewAttributeDecoder(m.Data[4:])
		if err != nil {
			return 0, fmt.Errorf("decoding the nftables generation: %w", err)
		}
		ad.ByteOrder = binary.BigEndian
		for ad.Next() {
			if ad.Type() == unix.NFTA_GEN_ID {
				id := ad.Uint32()
				if err := ad.Err(); err != nil {
					return 0, fmt.Errorf("decoding the nftables generation: %w", err)
				}
				return id, nil
			}
		}
		if err := ad.Err(); err != nil {
			return 0, fmt.Errorf("decoding the nftables generation: %w", err)
		}
	}
	return 0, fmt.Errorf("reading the nftables generation: no generation id in the kernel's reply")
}
