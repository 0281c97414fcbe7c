package netfilter

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/model"
)

// HookReader reads, without running a program, where a chain's rules
// jump and whether a chain exists: what the integrity check needs to know
// each second. Through iptables-nft that was ten programs per family and
// check, 3% of a core on an idle node; over netlink it is eight requests.
type HookReader interface {
	// JumpTargets lists the chains the rules of a chain jump or go to; a
	// chain or table that does not exist has none.
	JumpTargets(table Table, chain string) ([]string, error)
	// HasChain reports whether a chain exists.
	HasChain(table Table, chain string) (bool, error)
}

// NFTHooks reads the tables iptables-nft writes (nftables tables "nat"
// and "filter" of family ip or ip6) over netlink, in the network namespace
// of the calling thread.
type NFTHooks struct{ Family model.Family }

// JumpTargets implements HookReader with one dump of the chain's rules.
func (h NFTHooks) JumpTargets(table Table, chain string) ([]string, error) {
	var msgs [][]byte
	var err error
	// A dump a change interrupted is asked for once more.
	for range 2 {
		req := h.request(unix.NFT_MSG_GETRULE, unix.NLM_F_DUMP)
		req.AddData(nl.NewRtAttr(unix.NFTA_RULE_TABLE, nl.ZeroTerminated(string(table))))
		req.AddData(nl.NewRtAttr(unix.NFTA_RULE_CHAIN, nl.ZeroTerminated(chain)))
		if msgs, err = req.Execute(unix.NETLINK_NETFILTER, 0); !errors.Is(err, nl.ErrDumpInterrupted) {
			break
		}
	}
	if errors.Is(err, syscall.ENOENT) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing the rules of %s %s over netlink: %w", table, chain, err)
	}
	var targets []string
	for _, m := range msgs {
		targets = append(targets, ruleJumpTargets(m)...)
	}
	return targets, nil
}

// HasChain implements HookReader with one request for the chain.
func (h NFTHooks) HasChain(table Table, chain string) (bool, error) {
	req := h.request(unix.NFT_MSG_GETCHAIN, 0)
	req.AddData(nl.NewRtAttr(unix.NFTA_CHAIN_TABLE, nl.ZeroTerminated(string(table))))
	req.AddData(nl.NewRtAttr(unix.NFTA_CHAIN_NAME, nl.ZeroTerminated(chain)))
	_, err := req.Execute(unix.NETLINK_NETFILTER, 0)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("looking for chain %s %s over netlink: %w", table, chain, err)
	}
	return true, nil
}

func (h NFTHooks) request(msg, flags int) *nl.NetlinkRequest {
	req := nl.NewNetlinkRequest(unix.NFNL_SUBSYS_NFTABLES<<8|msg, flags)
	family := unix.NFPROTO_IPV4
	if h.Family == model.IPv6 {
		family = unix.NFPROTO_IPV6
	}
	req.AddData(&nl.Nfgenmsg{NfgenFamily: uint8(family), Version: nl.NFNETLINK_V0})
	return req
}

// ruleJumpTargets finds, in one NFT_MSG_NEWRULE message (its nfgenmsg
// header first), the chains its verdicts jump or go to. Only "immediate"
// expressions writing the verdict register are read: that is how
// iptables-nft writes "-j CHAIN", and anything else in a rule, whoever
// wrote it, is skipped without being understood.
func ruleJumpTargets(msg []byte) []string {
	if len(msg) < nl.SizeofNfgenmsg {
		return nil
	}
	var targets []string
	for _, rule := range attrs(msg[nl.SizeofNfgenmsg:]) {
		if rule.typ != unix.NFTA_RULE_EXPRESSIONS {
			continue
		}
		for _, elem := range attrs(rule.data) {
			if target, ok := immediateJump(elem.data); ok {
				targets = append(targets, target)
			}
		}
	}
	return targets
}

// immediateJump reads one expression: an immediate verdict jump or goto
// to a chain.
func immediateJump(expr []byte) (string, bool) {
	if unix.ByteSliceToString(attrData(expr, unix.NFTA_EXPR_NAME)) != "immediate" {
		return "", false
	}
	data := attrData(attrData(expr, unix.NFTA_EXPR_DATA), unix.NFTA_IMMEDIATE_DATA)
	verdict := attrData(data, unix.NFTA_DATA_VERDICT)
	code, chain := attrData(verdict, unix.NFTA_VERDICT_CODE), attrData(verdict, unix.NFTA_VERDICT_CHAIN)
	if len(code) < 4 || len(chain) == 0 {
		return "", false
	}
	switch int32(binary.BigEndian.Uint32(code)) {
	case unix.NFT_JUMP, unix.NFT_GOTO:
		return unix.ByteSliceToString(chain), true
	}
	return "", false
}

type attr struct {
	typ  uint16
	data []byte
}

// attrs splits a run of netlink attributes, the nested and byte-order
// flags cleared from their types; a malformed run has none.
func attrs(b []byte) []attr {
	parsed, err := nl.ParseRouteAttr(b)
	if err != nil {
		return nil
	}
	out := make([]attr, len(parsed))
	for i, a := range parsed {
		out[i] = attr{typ: a.Attr.Type &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), data: a.Value}
	}
	return out
}

// attrData is the data of the first attribute of a type in a run; nil if
// there is none.
func attrData(b []byte, typ uint16) []byte {
	for _, a := range attrs(b) {
		if a.typ == typ {
			return a.data
		}
	}
	return nil
}
