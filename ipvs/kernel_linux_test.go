package ipvs

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	libipvs "github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/svcproxy/svcproxy/internal/netnstest"
	"github.com/svcproxy/svcproxy/model"
)

// The real kernel's tests. Those named TestKernelIPVS... need IPVS and the
// dummy driver: on a kernel without IPVS they skip (CheckSupport says so),
// and they run in the VM:
//
//	go test -c -o /work/exp/ipvs.test ./ipvs
//	go run ./hack/vmrun -timeout 5m -- /work/exp/ipvs.test -test.v -test.run TestKernel
//
// The others run anywhere as root, each in namespaces of its own.

// openKernel opens a Kernel inside ns, closed when the test ends. Its
// sockets stay in ns wherever it is used from; openKernel checks that it
// was opened there before handing it out, so that nothing a test does
// through it reaches the host.
func openKernel(t *testing.T, ns *netnstest.NS) *kernel {
	t.Helper()
	var k Kernel
	if err := ns.Do(func() (err error) {
		k, err = OpenKernel()
		return err
	}); err != nil {
		t.Fatalf("OpenKernel in %s: %v", ns.Name, err)
	}
	t.Cleanup(k.Close)
	kk := k.(*kernel)
	// Opened on a thread inside ns: its sockets are there.
	var st unix.Stat_t
	if err := unix.Fstat(int(ns.Handle()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Dev != kk.dev || st.Ino != kk.ino {
		t.Fatalf("the kernel opened in %s is in another namespace", ns.Name)
	}
	return kk
}

// requireIPVS skips the test when CheckSupport says the kernel has no IPVS;
// any other complaint fails it.
func requireIPVS(t *testing.T) {
	t.Helper()
	netnstest.RequireRoot(t)
	err := CheckSupport("rr")
	if err != nil && strings.Contains(err.Error(), "no IPVS") {
		t.Skipf("needs IPVS (run it in the VM, see the top of this file): %v", err)
	}
	if err != nil {
		t.Fatalf("CheckSupport(rr): %v", err)
	}
}

func hasIPVS() bool {
	runModprobe("ip_vs")
	return ipvsFamily() == nil
}

func mustAddrs(t *testing.T, s ...string) []netip.Addr {
	t.Helper()
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

func TestKernelSets(t *testing.T) {
	ns := netnstest.NewNS(t, "sets")
	k := openKernel(t, ns)

	type family struct {
		f       model.Family
		entries map[SetType][]Entry
	}
	families := []family{
		{model.IPv4, map[SetType][]Entry{
			HashIP: {{Addr: netip.MustParseAddr("10.96.0.1")}, {Addr: netip.MustParseAddr("10.96.0.2")}},
			HashIPPort: {
				{Addr: netip.MustParseAddr("10.96.0.1"), Protocol: model.TCP, Port: 80},
				{Addr: netip.MustParseAddr("10.96.0.1"), Protocol: model.UDP, Port: 53},
				{Addr: netip.MustParseAddr("10.96.0.3"), Protocol: model.SCTP, Port: 9},
			},
			HashIPPortNet: {
				{Addr: netip.MustParseAddr("203.0.113.5"), Protocol: model.TCP, Port: 80, Net: netip.MustParsePrefix("192.168.50.0/24")},
				{Addr: netip.MustParseAddr("203.0.113.5"), Protocol: model.UDP, Port: 80, Net: netip.MustParsePrefix("10.0.0.7/32")},
			},
			BitmapPort: {{Port: 0}, {Port: 30080}, {Port: 65535}},
		}},
		{model.IPv6, map[SetType][]Entry{
			HashIP: {{Addr: netip.MustParseAddr("fd00:96::1")}, {Addr: netip.MustParseAddr("fd00:96::2")}},
			HashIPPort: {
				{Addr: netip.MustParseAddr("fd00:96::1"), Protocol: model.TCP, Port: 80},
				{Addr: netip.MustParseAddr("fd00:96::1"), Protocol: model.SCTP, Port: 80},
			},
			HashIPPortNet: {
				{Addr: netip.MustParseAddr("2001:db8::5"), Protocol: model.TCP, Port: 443, Net: netip.MustParsePrefix("fd00:50::/64")},
			},
			BitmapPort: {{Port: 30443}},
		}},
	}
	name := func(f model.Family, typ SetType) string {
		return fmt.Sprintf("T-%s-%s", f, strings.NewReplacer(":", "-", ",", "-").Replace(string(typ)))
	}
	types := []SetType{HashIP, HashIPPort, HashIPPortNet, BitmapPort}

	for _, fam := range families {
		for _, typ := range types {
			s := Set{Name: name(fam.f, typ), Type: typ, Family: fam.f}
			if err := k.CreateSet(s); err != nil {
				t.Fatalf("CreateSet(%v): %v", s, err)
			}
			if err := k.CreateSet(s); err != nil {
				t.Fatalf("CreateSet(%v) again: %v", s, err)
			}
			for _, e := range fam.entries[typ] {
				for range 2 { // the second add is no error
					if err := k.AddEntry(s, e); err != nil {
						t.Fatalf("AddEntry(%s, %s): %v", s.Name, e, err)
					}
				}
			}
		}
	}
	// Another type under an existing name is an error.
	if err := k.CreateSet(Set{Name: name(model.IPv4, HashIP), Type: HashIPPort, Family: model.IPv4}); err == nil || !strings.Contains(err.Error(), "exists with another type") {
		t.Errorf("CreateSet of an existing name with another type: %v", err)
	}

	for _, fam := range families {
		listed, err := k.ListSets(fam.f)
		if err != nil {
			t.Fatal(err)
		}
		got := setsOf(listed)
		var want []Set
		for _, f := range []model.Family{model.IPv4, model.IPv6} {
			for _, typ := range types {
				// bitmap:port sets have no family: listed under both.
				if f == fam.f || typ == BitmapPort {
					want = append(want, Set{Name: name(f, typ), Type: typ, Family: fam.f})
				}
			}
		}
		slices.SortFunc(want, func(a, b Set) int { return strings.Compare(a.Name, b.Name) })
		if !slices.Equal(got, want) {
			t.Errorf("ListSets(%s) = %v, want %v", fam.f, got, want)
		}
		for _, typ := range types {
			s := Set{Name: name(fam.f, typ), Type: typ, Family: fam.f}
			want := slices.Clone(fam.entries[typ])
			slices.SortFunc(want, Entry.Compare)
			got, err := k.SetEntries(s)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Errorf("SetEntries(%s) = %v, want %v", s.Name, got, want)
			}
			// Delete the first, twice: the second is no error.
			for range 2 {
				if err := k.DelEntry(s, want[0]); err != nil {
					t.Fatalf("DelEntry(%s, %s): %v", s.Name, want[0], err)
				}
			}
			if got, err := k.SetEntries(s); err != nil || !slices.Equal(got, want[1:]) {
				t.Errorf("SetEntries(%s) after deleting %s = %v, %v; want %v", s.Name, want[0], got, err, want[1:])
			}
		}
	}

	// The kernel agrees, as ipset spells it.
	out := ns.MustRun("ipset", "list", name(model.IPv4, HashIPPortNet))
	if !strings.Contains(out, "203.0.113.5,udp:80,10.0.0.7") || !strings.Contains(out, "family inet") {
		t.Errorf("ipset list %s:\n%s", name(model.IPv4, HashIPPortNet), out)
	}
	out = ns.MustRun("ipset", "list", name(model.IPv6, HashIP))
	if !strings.Contains(out, "fd00:96::2") || !strings.Contains(out, "family inet6") {
		t.Errorf("ipset list %s:\n%s", name(model.IPv6, HashIP), out)
	}

	// Missing sets.
	missing := Set{Name: "T-MISSING", Type: HashIP, Family: model.IPv4}
	if _, err := k.SetEntries(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("SetEntries of a missing set: %v, want ErrNotFound", err)
	}
	if err := k.AddEntry(missing, Entry{Addr: netip.MustParseAddr("10.0.0.1")}); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddEntry to a missing set: %v, want ErrNotFound", err)
	}
	if err := k.DelEntry(missing, Entry{Addr: netip.MustParseAddr("10.0.0.1")}); err != nil {
		t.Errorf("DelEntry from a missing set: %v", err)
	}
	if err := k.DestroySet(missing.Name); err != nil {
		t.Errorf("DestroySet of a missing set: %v", err)
	}
	// An entry the set's type cannot hold.
	if err := k.AddEntry(Set{Name: name(model.IPv4, HashIPPort), Type: HashIPPort}, Entry{Addr: netip.MustParseAddr("10.0.0.1")}); err == nil {
		t.Error("AddEntry of a hash:ip,port entry without protocol: no error")
	}

	// A set an iptables rule uses cannot be destroyed.
	used := name(model.IPv4, HashIP)
	ns.MustRun("iptables", "-w", "-A", "INPUT", "-m", "set", "--match-set", used, "dst", "-j", "ACCEPT")
	if err := k.DestroySet(used); err == nil {
		t.Errorf("DestroySet of a set in use: no error")
	}
	ns.MustRun("iptables", "-w", "-D", "INPUT", "-m", "set", "--match-set", used, "dst", "-j", "ACCEPT")

	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		for _, typ := range types {
			for range 2 {
				if err := k.DestroySet(name(f, typ)); err != nil {
					t.Fatalf("DestroySet(%s): %v", name(f, typ), err)
				}
			}
		}
	}
	for _, f := range []model.Family{model.IPv4, model.IPv6} {
		if got, err := k.ListSets(f); err != nil || len(got) != 0 {
			t.Errorf("ListSets(%s) after destroying all = %v, %v", f, got, err)
		}
	}
}

// A big set comes from the kernel in several messages: listed once, with
// every member.
func TestKernelSetsLarge(t *testing.T) {
	ns := netnstest.NewNS(t, "bigset")
	k := openKernel(t, ns)
	s := Set{Name: "T-BIG", Type: HashIPPort, Family: model.IPv4}
	if err := k.CreateSet(s); err != nil {
		t.Fatal(err)
	}
	small := Set{Name: "T-SMALL", Type: BitmapPort}
	if err := k.CreateSet(small); err != nil {
		t.Fatal(err)
	}
	const n = 3000
	for i := range n {
		e := Entry{Addr: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Protocol: model.TCP, Port: uint16(i)}
		if err := k.AddEntry(s, e); err != nil {
			t.Fatal(err)
		}
	}
	got, err := k.SetEntries(s)
	if err != nil || len(got) != n {
		t.Fatalf("SetEntries of %d members: %d, %v", n, len(got), err)
	}
	listed, err := k.ListSets(model.IPv4)
	if err != nil {
		t.Fatal(err)
	}
	want := []Set{{Name: "T-BIG", Type: HashIPPort, Family: model.IPv4}, {Name: "T-SMALL", Type: BitmapPort, Family: model.IPv4}}
	if sets := setsOf(listed); !slices.Equal(sets, want) {
		t.Errorf("ListSets = %v, want %v", sets, want)
	}
	if len(listed) == 2 && (len(listed[0].Entries) != n || !slices.Equal(listed[0].Entries, got)) {
		t.Errorf("ListSets lists %d members of T-BIG; SetEntries %d", len(listed[0].Entries), n)
	}
}

func setsOf(listed []Listing) []Set {
	var sets []Set
	for _, l := range listed {
		sets = append(sets, l.Set)
	}
	return sets
}

func TestKernelLinks(t *testing.T) {
	ns := netnstest.NewNS(t, "links")
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kt0"}, PeerName: "kt1"}); err != nil {
		t.Fatal(err)
	}
	k := openKernel(t, ns)

	binds := map[string][]string{
		"kt0": {"10.0.0.1", "fd00::1", "192.0.2.9"},
		"kt1": {"10.0.0.2", "fd00::2", "192.0.2.9"}, // 192.0.2.9 on both
		"lo":  {"127.0.0.5"},
	}
	for dev, addrs := range binds {
		for _, a := range mustAddrs(t, addrs...) {
			for range 2 { // the second is no error
				if err := k.AddAddr(dev, a); err != nil {
					t.Fatalf("AddAddr(%s, %s): %v", dev, a, err)
				}
			}
		}
	}
	// Bound as /32 and /128; IPv6 usable at once.
	kt0, err := h.LinkByName("kt0")
	if err != nil {
		t.Fatal(err)
	}
	list, err := h.AddrList(kt0, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range list {
		ones, bits := a.Mask.Size()
		if ones != bits {
			t.Errorf("%s bound with prefix /%d", a.IP, ones)
		}
		if a.IP.To4() == nil && (a.Flags&unix.IFA_F_TENTATIVE != 0 || a.Flags&unix.IFA_F_NODAD == 0) {
			t.Errorf("%s has flags %#x: want NODAD, not tentative", a.IP, a.Flags)
		}
	}
	// Up, so that the kernel gives kt0 and kt1 IPv6 link-local addresses,
	// which LinkAddrs and HostAddrs leave out.
	for _, dev := range []string{"kt0", "kt1"} {
		l, err := h.LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		if err := h.LinkSetUp(l); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		list, err := h.AddrList(kt0, netlink.FAMILY_V6)
		if err != nil {
			t.Fatal(err)
		}
		if slices.ContainsFunc(list, func(a netlink.Addr) bool { return a.IP.IsLinkLocalUnicast() }) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("kt0 got no IPv6 link-local address")
		}
		time.Sleep(20 * time.Millisecond)
	}

	check := func(what string, got []netip.Addr, err error, want ...string) {
		t.Helper()
		w := mustAddrs(t, want...)
		if err != nil || !slices.Equal(got, w) {
			t.Errorf("%s = %v, %v; want %v", what, got, err, w)
		}
	}
	got, err := k.LinkAddrs("kt0", model.IPv4)
	check("LinkAddrs(kt0, IPv4)", got, err, "10.0.0.1", "192.0.2.9")
	got, err = k.LinkAddrs("kt0", model.IPv6)
	check("LinkAddrs(kt0, IPv6)", got, err, "fd00::1")
	got, err = k.LinkAddrs("missing", model.IPv4)
	check("LinkAddrs(missing, IPv4)", got, err)
	got, err = k.HostAddrs(model.IPv4, "")
	check("HostAddrs(IPv4)", got, err, "10.0.0.1", "10.0.0.2", "127.0.0.1", "127.0.0.5", "192.0.2.9")
	got, err = k.HostAddrs(model.IPv4, "kt0")
	check("HostAddrs(IPv4, but kt0)", got, err, "10.0.0.2", "127.0.0.1", "127.0.0.5", "192.0.2.9")
	got, err = k.HostAddrs(model.IPv6, "")
	check("HostAddrs(IPv6)", got, err, "::1", "fd00::1", "fd00::2")
	got, err = k.HostAddrs(model.IPv6, "kt1")
	check("HostAddrs(IPv6, but kt1)", got, err, "::1", "fd00::1")
	got, err = k.HostAddrs(model.IPv6, "missing")
	check("HostAddrs(IPv6, but a missing link)", got, err, "::1", "fd00::1", "fd00::2")

	// The dump of one link's addresses is filtered by the kernel, and the
	// node's addresses read link by link are those of the one dump.
	if !k.strictDumps {
		t.Error("the kernel refused strict netlink checking: every address dump sends every link's addresses")
	}
	names, err := k.LinkNames()
	if want := []string{"kt0", "kt1", "lo"}; err != nil || !slices.Equal(names, want) {
		t.Errorf("LinkNames = %v, %v; want %v", names, err, want)
	}
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		oneDump, err := nodeAddrs(k, family, 0)
		if err != nil {
			t.Fatal(err)
		}
		byLink, err := nodeAddrs(k, family, 1<<20)
		if err != nil || !slices.Equal(byLink, oneDump) {
			t.Errorf("%s node addresses link by link = %v, %v; one dump gives %v", family, byLink, err, oneDump)
		}
	}

	for _, a := range mustAddrs(t, "10.0.0.1", "fd00::1") {
		for range 2 { // the second is no error
			if err := k.DelAddr("kt0", a); err != nil {
				t.Fatalf("DelAddr(kt0, %s): %v", a, err)
			}
		}
	}
	got, err = k.LinkAddrs("kt0", model.IPv4)
	check("LinkAddrs(kt0, IPv4) after DelAddr", got, err, "192.0.2.9")
	got, err = k.LinkAddrs("kt0", model.IPv6)
	check("LinkAddrs(kt0, IPv6) after DelAddr", got, err)
	if err := k.DelAddr("missing", netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Errorf("DelAddr on a missing link: %v", err)
	}
	if err := k.AddAddr("missing", netip.MustParseAddr("10.0.0.1")); err == nil {
		t.Error("AddAddr on a missing link: no error")
	}

	for range 2 { // the second is no error
		if err := k.DeleteLink("kt0"); err != nil {
			t.Fatalf("DeleteLink(kt0): %v", err)
		}
	}
	for _, dev := range []string{"kt0", "kt1"} { // a veth's peer goes with it
		if _, err := h.LinkByName(dev); err == nil {
			t.Errorf("%s still exists after DeleteLink(kt0)", dev)
		}
	}
}

// A link found by LinkNames and gone before its addresses are read (a
// pod's veth, deleted meanwhile) has none: no error that would fail the
// sync.
func TestKernelLinkGoneBeforeItsAddrs(t *testing.T) {
	ns := netnstest.NewNS(t, "gone")
	h, err := ns.Netlink()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "kg0"}, PeerName: "kg1"}); err != nil {
		t.Fatal(err)
	}
	k := openKernel(t, ns)
	if err := k.AddAddr("kg0", netip.MustParseAddr("10.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if _, err := k.LinkNames(); err != nil {
		t.Fatal(err)
	}
	kg0, err := h.LinkByName("kg0")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(kg0); err != nil {
		t.Fatal(err)
	}
	if got, err := k.LinkAddrs("kg0", model.IPv4); err != nil || len(got) != 0 {
		t.Errorf("LinkAddrs of a link deleted since LinkNames = %v, %v; want none, no error", got, err)
	}
}

func TestKernelSysctls(t *testing.T) {
	const name = "net/ipv4/ip_forward"
	hostBefore := readHostSysctl(t, name)
	want := map[string]string{"0": "1", "1": "0"}[hostBefore]
	ns := netnstest.NewNS(t, "sysctls")
	k := openKernel(t, ns)

	if err := ns.Do(func() error {
		if err := k.WriteSysctl(name, want); err != nil {
			return err
		}
		got, err := k.ReadSysctl(name)
		if err != nil || got != want {
			return fmt.Errorf("ReadSysctl(%s) in the namespace = %q, %v; want %q", name, got, err, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// From a thread outside the namespace, the Kernel still reads the
	// namespace's value, not the host's.
	if got, err := k.ReadSysctl(name); err != nil || got != want {
		t.Fatalf("ReadSysctl(%s) from the host's thread = %q, %v; want the namespace's %q", name, got, err, want)
	}
	// And writes it: the host's value written back, so that even a wrong
	// write would change nothing on the host.
	if err := k.WriteSysctl(name, hostBefore); err != nil {
		t.Fatal(err)
	}
	var inNS string
	if err := ns.Do(func() error {
		b, err := os.ReadFile("/proc/sys/" + name)
		inNS = strings.TrimSpace(string(b))
		return err
	}); err != nil || inNS != hostBefore {
		t.Errorf("the namespace's %s after WriteSysctl from outside = %q, %v; want %q", name, inNS, err, hostBefore)
	}
	if got := readHostSysctl(t, name); got != hostBefore {
		t.Errorf("the host's %s changed from %s to %s", name, hostBefore, got)
	}

	for _, bad := range []string{"", "/net/ipv4/ip_forward", "../../etc/passwd", "net/../../etc/passwd", "net//ipv4"} {
		if _, err := k.ReadSysctl(bad); err == nil {
			t.Errorf("ReadSysctl(%q): no error", bad)
		}
		if err := k.WriteSysctl(bad, "1"); err == nil {
			t.Errorf("WriteSysctl(%q): no error", bad)
		}
	}
	if _, err := k.ReadSysctl("net/ipv4/no_such_setting"); err == nil {
		t.Error("ReadSysctl of a missing setting: no error")
	}
	if err := k.WriteSysctl("net/ipv4/no_such_setting", "1"); err == nil {
		t.Error("WriteSysctl of a missing setting: no error")
	}
}

func readHostSysctl(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("/proc/sys/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// EnsureDummy makes a down dummy where the kernel has the driver (the VM),
// and says ErrNoDummy where it has not (this machine).
func TestKernelEnsureDummy(t *testing.T) {
	ns := netnstest.NewNS(t, "dummy")
	k := openKernel(t, ns)
	err := k.EnsureDummy("kt-ipvs0")
	if errors.Is(err, ErrNoDummy) {
		if hasIPVS() {
			t.Fatalf("EnsureDummy: %v, on a kernel with IPVS (the VM has the dummy driver)", err)
		}
		if moduleAvailable("dummy") == modulePresent {
			t.Fatalf("EnsureDummy: %v, but the dummy module is there", err)
		}
		if !strings.Contains(err.Error(), "dummy") {
			t.Errorf("ErrNoDummy's message: %v", err)
		}
		t.Logf("no dummy driver, as expected on this kernel: %v", err)
		return
	}
	if err != nil {
		t.Fatalf("EnsureDummy: %v", err)
	}
	if err := k.EnsureDummy("kt-ipvs0"); err != nil {
		t.Fatalf("EnsureDummy again: %v", err)
	}
	l, err := k.nl.LinkByName("kt-ipvs0")
	if err != nil {
		t.Fatal(err)
	}
	if l.Type() != "dummy" || l.Attrs().Flags&net.FlagUp != 0 {
		t.Errorf("kt-ipvs0 is a %s with flags %v: want a dummy, down", l.Type(), l.Attrs().Flags)
	}
	t.Logf("kt-ipvs0: %s, flags %v", l.Type(), l.Attrs().Flags)
	for _, a := range mustAddrs(t, "10.96.0.1", "fd00:96::1") {
		if err := k.AddAddr("kt-ipvs0", a); err != nil {
			t.Fatal(err)
		}
		f := model.FamilyOf(a)
		if got, err := k.LinkAddrs("kt-ipvs0", f); err != nil || !slices.Equal(got, []netip.Addr{a}) {
			t.Errorf("LinkAddrs(kt-ipvs0, %s) = %v, %v", f, got, err)
		}
		if got, err := k.HostAddrs(f, ""); err != nil || !slices.Contains(got, a) {
			t.Errorf("HostAddrs(%s) = %v, %v; want %s in it", f, got, err, a)
		}
		if got, err := k.HostAddrs(f, "kt-ipvs0"); err != nil || slices.Contains(got, a) {
			t.Errorf("HostAddrs(%s, but kt-ipvs0) = %v, %v; want no %s", f, got, err, a)
		}
	}
	if err := k.DeleteLink("kt-ipvs0"); err != nil {
		t.Fatal(err)
	}
}

func TestKernelCheckSupport(t *testing.T) {
	netnstest.RequireRoot(t)
	err := CheckSupport("rr")
	if !hasIPVS() {
		if err == nil || !strings.Contains(err.Error(), "the kernel has no IPVS (module ip_vs)") || !strings.Contains(err.Error(), "--mode=iptables") {
			t.Fatalf("CheckSupport(rr) without IPVS: %v", err)
		}
		t.Logf("CheckSupport(rr): %v", err)
		return
	}
	if err != nil {
		t.Fatalf("CheckSupport(rr) with IPVS: %v", err)
	}
	if err := CheckSupport(""); err != nil {
		t.Errorf("CheckSupport(\"\") (rr): %v", err)
	}
	err = CheckSupport("nope")
	if err == nil || !strings.Contains(err.Error(), `IPVS scheduler "nope" is not available (no module ip_vs_nope)`) || !strings.Contains(err.Error(), "--ipvs-scheduler") {
		t.Errorf("CheckSupport(nope): %v", err)
	}
	t.Logf("CheckSupport(nope): %v", err)
	if err := CheckSupport("../dummy"); err == nil {
		t.Error("CheckSupport(../dummy): no error")
	}
	for _, s := range []string{"wrr", "lc", "sh", "mh"} {
		if err := CheckSupport(s); err != nil {
			t.Errorf("CheckSupport(%s): %v", s, err)
		}
	}
}

func TestKernelRelease(t *testing.T) {
	for release, want := range map[string]bool{
		"6.1.0-18-amd64": true, "5.9.0": true, "5.10.0-28-cloud-amd64": true, "5.8.18": false,
		"4.19.0-26-amd64": false, "6.18.44-fc-v669": true, "10.0": true,
	} {
		major, minor, err := parseRelease(release)
		if err != nil {
			t.Fatal(err)
		}
		if got := major > 5 || (major == 5 && minor >= 9); got != want {
			t.Errorf("%s: fixed %v, want %v", release, got, want)
		}
	}
	if _, _, err := parseRelease("unknown"); err == nil {
		t.Error("parseRelease(unknown): no error")
	}
	fixed, err := ConnReuseFixed()
	if err != nil {
		t.Fatal(err)
	}
	release, _ := kernelRelease()
	t.Logf("kernel %s: conn_reuse_mode fixed: %v", release, fixed)
}

// Without IPVS every IPVS call fails with an error that says so.
func TestKernelNoIPVS(t *testing.T) {
	netnstest.RequireRoot(t)
	if hasIPVS() {
		t.Skip("the kernel has IPVS: TestKernelIPVS... test it")
	}
	ns := netnstest.NewNS(t, "noipvs")
	k := openKernel(t, ns)
	key := VSKey{Addr: netip.MustParseAddr("10.96.0.1"), Protocol: model.TCP, Port: 80}
	rs := RealServer{Addr: netip.MustParseAddrPort("10.244.0.10:8080"), Weight: 1}
	_, err1 := k.VirtualServers(model.IPv4)
	_, err2 := k.RealServers(key)
	for i, err := range []error{
		err1, err2,
		k.AddVirtualServer(VirtualServer{VSKey: key, Scheduler: "rr"}),
		k.UpdateVirtualServer(VirtualServer{VSKey: key, Scheduler: "rr"}),
		k.DeleteVirtualServer(key),
		k.AddRealServer(key, rs),
		k.UpdateRealServer(key, rs),
		k.DeleteRealServer(key, rs.Addr),
		k.SetTimeouts(Timeouts{TCP: time.Hour}),
	} {
		if err == nil || !strings.Contains(err.Error(), "no IPVS") || errors.Is(err, ErrNotFound) {
			t.Errorf("call %d without IPVS: %v", i, err)
		}
	}
}

// ipvsKeys are a virtual server of each protocol and family.
func ipvsKeys() []VSKey {
	var keys []VSKey
	for _, a := range []string{"10.96.0.1", "fd00:96::1"} {
		for _, p := range []model.Protocol{model.TCP, model.UDP, model.SCTP} {
			keys = append(keys, VSKey{Addr: netip.MustParseAddr(a), Protocol: p, Port: 80})
		}
	}
	return keys
}

func TestKernelIPVSVirtualServers(t *testing.T) {
	requireIPVS(t)
	ns := netnstest.NewNS(t, "ipvs-vs")
	k := openKernel(t, ns)

	want := map[model.Family][]VirtualServer{}
	for i, key := range ipvsKeys() {
		vs := VirtualServer{VSKey: key, Scheduler: "rr"}
		if i%2 == 0 {
			vs.Persistence = 10800
		}
		if err := k.AddVirtualServer(vs); err != nil {
			t.Fatalf("AddVirtualServer(%v): %v", vs, err)
		}
		err := k.AddVirtualServer(vs)
		if !errors.Is(err, syscall.EEXIST) || errors.Is(err, ErrNotFound) {
			t.Errorf("AddVirtualServer(%s) again: %v, want EEXIST", key, err)
		}
		want[key.Family()] = append(want[key.Family()], vs)
	}
	// A fwmark service is no VSKey: left out.
	fw := &libipvs.Service{FWMark: 7, AddressFamily: unix.AF_INET, SchedName: "rr", Netmask: 0xffffffff}
	if err := k.ipvs.NewService(fw); err != nil {
		t.Fatal(err)
	}
	check := func(what string) {
		t.Helper()
		for _, f := range []model.Family{model.IPv4, model.IPv6} {
			w := slices.Clone(want[f])
			slices.SortFunc(w, func(a, b VirtualServer) int { return a.VSKey.Compare(b.VSKey) })
			got, err := k.VirtualServers(f)
			if err != nil || !slicesEqualVS(got, w) {
				t.Errorf("%s: VirtualServers(%s) = %v, %v; want %v", what, f, got, err, w)
			}
			// The whole table's listing (in /proc: persistence in
			// jiffies there) gives the same settings.
			table, err := k.Table(f)
			var listed []VirtualServer
			for _, l := range table {
				listed = append(listed, l.VirtualServer)
			}
			slices.SortFunc(listed, func(a, b VirtualServer) int { return a.VSKey.Compare(b.VSKey) })
			if err != nil || !slicesEqualVS(listed, w) {
				t.Errorf("%s: Table(%s) = %v, %v; want %v", what, f, listed, err, w)
			}
		}
	}
	check("added")
	out := ns.MustRun("ipvsadm", "-Ln")
	for _, s := range []string{"TCP  10.96.0.1:80 rr persistent 10800", "UDP  10.96.0.1:80 rr\n", "SCTP 10.96.0.1:80 rr persistent 10800", "TCP  [fd00:96::1]:80 rr\n", "FWM  7 rr"} {
		if !strings.Contains(out, s) {
			t.Errorf("ipvsadm -Ln has no %q:\n%s", s, out)
		}
	}

	// Updates: another scheduler, persistence on and off.
	for f := range want {
		for i := range want[f] {
			vs := &want[f][i]
			vs.Scheduler = "wrr"
			if vs.Persistence == 0 {
				vs.Persistence = 60
			} else {
				vs.Persistence = 0
			}
			if err := k.UpdateVirtualServer(*vs); err != nil {
				t.Fatalf("UpdateVirtualServer(%v): %v", *vs, err)
			}
		}
	}
	check("updated")

	missing := VSKey{Addr: netip.MustParseAddr("10.96.0.99"), Protocol: model.TCP, Port: 80}
	if err := k.UpdateVirtualServer(VirtualServer{VSKey: missing, Scheduler: "rr"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateVirtualServer of a missing one: %v, want ErrNotFound", err)
	}
	if err := k.AddVirtualServer(VirtualServer{VSKey: missing, Scheduler: "nope"}); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("AddVirtualServer with scheduler nope: %v, want an error (not ErrNotFound)", err)
	} else {
		t.Logf("AddVirtualServer with scheduler nope: %v", err)
	}

	for _, key := range ipvsKeys() {
		for range 2 { // the second is no error
			if err := k.DeleteVirtualServer(key); err != nil {
				t.Fatalf("DeleteVirtualServer(%s): %v", key, err)
			}
		}
	}
	want = nil
	check("deleted")
	if err := k.ipvs.DelService(fw); err != nil {
		t.Fatal(err)
	}
}

func slicesEqualVS(a, b []VirtualServer) bool {
	return slices.EqualFunc(a, b, func(x, y VirtualServer) bool {
		return x.VSKey == y.VSKey && x.Scheduler == y.Scheduler && x.Persistence == y.Persistence && len(x.Reals) == 0 && len(y.Reals) == 0
	})
}

func TestKernelIPVSRealServers(t *testing.T) {
	requireIPVS(t)
	ns := netnstest.NewNS(t, "ipvs-rs")
	k := openKernel(t, ns)

	for _, key := range ipvsKeys() {
		if err := k.AddVirtualServer(VirtualServer{VSKey: key, Scheduler: "wrr"}); err != nil {
			t.Fatal(err)
		}
		// No real servers yet: none, not ErrNotFound.
		if got, err := k.RealServers(key); err != nil || len(got) != 0 {
			t.Errorf("RealServers(%s) with none = %v, %v", key, got, err)
		}
		base := "10.244.0."
		if key.Family() == model.IPv6 {
			base = "fd00:244::"
		}
		var want []RealStatus
		for i, w := range []int{2, 1, 0} {
			a := netip.MustParseAddr(fmt.Sprintf("%s%d", base, 10+i))
			rs := RealServer{Addr: netip.AddrPortFrom(a, 8080), Weight: w}
			if err := k.AddRealServer(key, rs); err != nil {
				t.Fatalf("AddRealServer(%s, %v): %v", key, rs, err)
			}
			if err := k.AddRealServer(key, rs); !errors.Is(err, syscall.EEXIST) {
				t.Errorf("AddRealServer(%s, %v) again: %v, want EEXIST", key, rs, err)
			}
			want = append(want, RealStatus{RealServer: rs})
		}
		if got, err := k.RealServers(key); err != nil || !slices.Equal(got, want) {
			t.Errorf("RealServers(%s) = %v, %v; want %v", key, got, err, want)
		}
		want[0].Weight = 5
		if err := k.UpdateRealServer(key, want[0].RealServer); err != nil {
			t.Fatal(err)
		}
		gone := RealServer{Addr: netip.AddrPortFrom(netip.MustParseAddr(base+"99"), 8080), Weight: 1}
		if err := k.UpdateRealServer(key, gone); !errors.Is(err, ErrNotFound) {
			t.Errorf("UpdateRealServer of a missing real server: %v, want ErrNotFound", err)
		}
		for range 2 { // the second is no error
			if err := k.DeleteRealServer(key, want[1].Addr); err != nil {
				t.Fatalf("DeleteRealServer(%s, %s): %v", key, want[1].Addr, err)
			}
		}
		want = slices.Delete(want, 1, 2)
		if got, err := k.RealServers(key); err != nil || !slices.Equal(got, want) {
			t.Errorf("RealServers(%s) after update and delete = %v, %v; want %v", key, got, err, want)
		}
	}
	// The one-read listing says what the requests per virtual server say.
	for _, family := range []model.Family{model.IPv4, model.IPv6} {
		table, err := k.Table(family)
		if err != nil {
			t.Fatal(err)
		}
		servers, err := k.VirtualServers(family)
		if err != nil {
			t.Fatal(err)
		}
		if len(table) != len(servers) {
			t.Errorf("Table(%v) lists %d virtual servers, VirtualServers %d", family, len(table), len(servers))
		}
		for _, vs := range servers {
			reals, err := k.RealServers(vs.VSKey)
			if err != nil {
				t.Fatal(err)
			}
			l, ok := table[vs.VSKey]
			if !ok || l.VirtualServer.Scheduler != vs.Scheduler || l.Persistence != vs.Persistence || !slices.Equal(l.Status, reals) {
				t.Errorf("Table(%v)[%s] = %+v; the requests say %+v with %v", family, vs.VSKey, l, vs, reals)
			}
		}
	}
	out := ns.MustRun("ipvsadm", "-Ln")
	for _, s := range []string{"-> 10.244.0.10:8080             Masq    5", "-> [fd00:244::12]:8080          Masq    0"} {
		if !strings.Contains(out, s) {
			t.Errorf("ipvsadm -Ln has no %q:\n%s", s, out)
		}
	}

	missing := VSKey{Addr: netip.MustParseAddr("10.96.0.99"), Protocol: model.TCP, Port: 80}
	rs := RealServer{Addr: netip.MustParseAddrPort("10.244.0.10:8080"), Weight: 1}
	if _, err := k.RealServers(missing); !errors.Is(err, ErrNotFound) {
		t.Errorf("RealServers of a missing virtual server: %v, want ErrNotFound", err)
	} else {
		t.Logf("RealServers of a missing virtual server: %v", err)
	}
	if err := k.AddRealServer(missing, rs); !errors.Is(err, ErrNotFound) {
		t.Errorf("AddRealServer to a missing virtual server: %v, want ErrNotFound", err)
	}
	if err := k.UpdateRealServer(missing, rs); !errors.Is(err, ErrNotFound) {
		t.Errorf("UpdateRealServer in a missing virtual server: %v, want ErrNotFound", err)
	}
	if err := k.DeleteRealServer(missing, rs.Addr); err != nil {
		t.Errorf("DeleteRealServer in a missing virtual server: %v", err)
	}
	for _, key := range ipvsKeys() {
		if err := k.DeleteVirtualServer(key); err != nil {
			t.Fatal(err)
		}
		if _, err := k.RealServers(key); !errors.Is(err, ErrNotFound) {
			t.Errorf("RealServers(%s) after deleting it: %v, want ErrNotFound", key, err)
		}
	}
}

func TestKernelIPVSTimeouts(t *testing.T) {
	requireIPVS(t)
	ns := netnstest.NewNS(t, "ipvs-timeouts")
	k := openKernel(t, ns)
	get := func() libipvs.Config {
		t.Helper()
		c, err := k.ipvs.GetConfig()
		if err != nil {
			t.Fatal(err)
		}
		return *c
	}
	before := get()
	t.Logf("timeouts at first: %+v", before)
	steps := []struct {
		set  Timeouts
		want func(c *libipvs.Config)
	}{
		{Timeouts{TCP: 1000 * time.Second}, func(c *libipvs.Config) { c.TimeoutTCP = 1000 * time.Second }},
		{Timeouts{TCPFin: 30 * time.Second, UDP: 1500 * time.Millisecond}, func(c *libipvs.Config) {
			c.TimeoutTCPFin, c.TimeoutUDP = 30*time.Second, 2*time.Second // rounded up
		}},
		{Timeouts{}, func(*libipvs.Config) {}},
		{Timeouts{TCP: 900 * time.Second, TCPFin: 120 * time.Second, UDP: 300 * time.Second}, func(c *libipvs.Config) {
			c.TimeoutTCP, c.TimeoutTCPFin, c.TimeoutUDP = 900*time.Second, 120*time.Second, 300*time.Second
		}},
	}
	want := before
	for _, s := range steps {
		if err := k.SetTimeouts(s.set); err != nil {
			t.Fatalf("SetTimeouts(%+v): %v", s.set, err)
		}
		s.want(&want)
		if got := get(); got != want {
			t.Errorf("after SetTimeouts(%+v): %+v, want %+v", s.set, got, want)
		}
	}
	if err := k.SetTimeouts(Timeouts{TCP: -time.Second}); err == nil {
		t.Error("SetTimeouts with a negative timeout: no error")
	}
}

// Real traffic through a VIP bound on a dummy: the node namespace's
// kube-ipvs0 carries the VIP, IPVS masquerades to a pod behind a veth, and
// the real server's connection counts show the connections.
func TestKernelIPVSTraffic(t *testing.T) {
	requireIPVS(t)
	bed := netnstest.NewBed(t, 1)
	node, pod := bed.Node(), bed.Pod(0)
	k := openKernel(t, node)
	if err := k.EnsureDummy("kt-ipvs0"); err != nil {
		t.Fatal(err)
	}
	pod.ServeTCP(8080)
	// A server that holds its connections open: active connections.
	var ln net.Listener
	if err := pod.Do(func() (err error) {
		ln, err = net.Listen("tcp", ":8081")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var held sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	held.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		held.Wait()
		mu.Lock()
		for _, c := range conns {
			_ = c.Close()
		}
		mu.Unlock()
	})

	for _, vip := range mustAddrs(t, "10.96.0.10", "fd00:96::10") {
		podAddr := pod.Addr(vip)
		if err := k.AddAddr("kt-ipvs0", vip); err != nil {
			t.Fatal(err)
		}
		quick := VSKey{Addr: vip, Protocol: model.TCP, Port: 80}
		hold := VSKey{Addr: vip, Protocol: model.TCP, Port: 81}
		for key, port := range map[VSKey]uint16{quick: 8080, hold: 8081} {
			if err := k.AddVirtualServer(VirtualServer{VSKey: key, Scheduler: "rr"}); err != nil {
				t.Fatal(err)
			}
			if err := k.AddRealServer(key, RealServer{Addr: netip.AddrPortFrom(podAddr, port), Weight: 1}); err != nil {
				t.Fatal(err)
			}
		}
		// Connections that end: inactive (TIME_WAIT and such) afterwards.
		for range 3 {
			reply, err := bed.Outside().DialTCP(netip.AddrPortFrom(vip, 80))
			if err != nil {
				t.Fatalf("dialing %s from outside: %v", netip.AddrPortFrom(vip, 80), err)
			}
			if reply.Server != pod.Name || reply.Source.Addr() != bed.Outside().Addr(vip) {
				t.Errorf("dialing %s: %v", vip, reply)
			}
		}
		// A connection that stays: active.
		var c net.Conn
		if err := bed.Outside().Do(func() (err error) {
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(vip, 81).String(), 5*time.Second)
			return err
		}); err != nil {
			t.Fatalf("dialing %s:81: %v", vip, err)
		}
		waitConns(t, k, quick, func(r RealStatus) bool { return r.InactiveConns > 0 })
		waitConns(t, k, hold, func(r RealStatus) bool { return r.ActiveConns > 0 })
		_, _ = io.WriteString(c, "bye")
		_ = c.Close()
		waitConns(t, k, hold, func(r RealStatus) bool { return r.ActiveConns == 0 && r.InactiveConns > 0 })
		t.Logf("%s: %s", vip, node.MustRun("ipvsadm", "-Ln"))
	}
}

// waitConns waits (bounded) until the virtual server's only real server's
// counts satisfy ok.
func waitConns(t *testing.T, k *kernel, key VSKey, ok func(RealStatus) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		reals, err := k.RealServers(key)
		if err != nil {
			t.Fatal(err)
		}
		if len(reals) == 1 && ok(reals[0]) {
			t.Logf("%s: %+v", key, reals[0])
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: real servers %+v after 10s", key, reals)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
