package ipvs

import (
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/svcproxy/svcproxy/internal/golden"
	"github.com/svcproxy/svcproxy/model"
	mt "github.com/svcproxy/svcproxy/model/modeltest"
)

var wantedNodeAddrs = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.168.1.10"),
	netip.MustParseAddr("::1"), netip.MustParseAddr("fd00::10")}

// What the integrity check compares port by port is what a full plan
// wants: gathered as state gathers it, the two are one state. Random
// views of up to 30 ports (external IPs two ports claim among them), and
// a big one.
func TestFullWantsOfIsTheFullPlansWant(t *testing.T) {
	for seed := range uint64(300) {
		ch := mt.RandChooser{R: rand.New(rand.NewPCG(seed, 7))}
		checkFullWantsOf(t, ch, 1+ch.Intn(30))
	}
	checkFullWantsOfView(t, Config{}, mt.BigView(200, 4))
}

func FuzzFullWantsOfIsTheFullPlansWant(f *testing.F) {
	f.Add([]byte{0})
	f.Add([]byte("a view of many ports with node ports and LB IPs and local policies"))
	f.Add([]byte{1, 9, 9, 9, 2, 7, 200, 3, 3, 3, 3, 3, 17, 90, 1, 0, 4, 4, 8, 8, 250, 251})
	f.Fuzz(func(t *testing.T, data []byte) {
		ch := &mt.ByteChooser{Data: data}
		checkFullWantsOf(t, ch, ch.Intn(12))
	})
}

func checkFullWantsOf(t *testing.T, ch mt.Chooser, ports int) {
	t.Helper()
	family := model.IPv4
	if ch.Intn(2) == 1 {
		family = model.IPv6
	}
	g := mt.Gen{Ch: ch, Family: family}
	cfg := Config{Rules: g.Config()}
	checkFullWantsOfView(t, cfg, g.View(ports))
}

func checkFullWantsOfView(t *testing.T, cfg Config, view *model.NodeView) {
	t.Helper()
	want := Compile(cfg, view, nil, wantedNodeAddrs).Want
	w := fullWantsOf(cfg, view, wantedNodeAddrs)
	got := NewState(view.Family)
	got.Sets, got.Sysctls = want.Sets, w.Sysctls
	for o := range w.Ports {
		o.addTo(got)
	}
	for _, e := range w.Entries {
		got.Entries[e] = true
	}
	if g, w := got.Dump(), want.Dump(); g != w {
		t.Fatalf("fullWantsOf differs from the full plan's Want: %s", golden.FirstDifference([]byte(w), []byte(g)))
	}
}
