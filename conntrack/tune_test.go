package conntrack

import (
	"errors"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
)

// kubeProxyDefaults is kube-proxy's default conntrack configuration.
var kubeProxyDefaults = Tuning{MaxPerCore: 32 * 1024, Min: 128 * 1024,
	TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour}

const (
	established = "net/netfilter/nf_conntrack_tcp_timeout_established"
	closeWait   = "net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	beLiberal   = "net/netfilter/nf_conntrack_tcp_be_liberal"
	udpTimeout  = "net/netfilter/nf_conntrack_udp_timeout"
	udpStream   = "net/netfilter/nf_conntrack_udp_timeout_stream"
)

func TestPlanTuning(t *testing.T) {
	tests := []struct {
		name   string
		tuning Tuning
		cpus   int
		want   TuningPlan
	}{
		{"kube-proxy's defaults on 2 CPUs: the floor", kubeProxyDefaults, 2,
			TuningPlan{Max: 131072, Sysctls: []Sysctl{{established, 86400}, {closeWait, 3600}}}},
		{"kube-proxy's defaults on 16 CPUs: per core", kubeProxyDefaults, 16,
			TuningPlan{Max: 524288, Sysctls: []Sysctl{{established, 86400}, {closeWait, 3600}}}},
		{"per core equal to the floor", Tuning{MaxPerCore: 32768, Min: 131072}, 4, TuningPlan{Max: 131072}},
		{"no floor", Tuning{MaxPerCore: 1000}, 3, TuningPlan{Max: 3000}},
		{"max per core 0 leaves the limit and ignores the floor", Tuning{Min: 131072}, 8, TuningPlan{}},
		{"everything 0 leaves everything", Tuning{}, 8, TuningPlan{}},
		{"every setting, in kube-proxy's order", Tuning{MaxPerCore: 1, Min: 10,
			TCPEstablishedTimeout: 2 * time.Hour, TCPCloseWaitTimeout: 90 * time.Second, TCPBeLiberal: true,
			UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute}, 1,
			TuningPlan{Max: 10, Sysctls: []Sysctl{{established, 7200}, {closeWait, 90}, {beLiberal, 1},
				{udpTimeout, 30}, {udpStream, 120}}}},
		{"whole seconds, truncated", Tuning{TCPEstablishedTimeout: 1500 * time.Millisecond}, 1,
			TuningPlan{Sysctls: []Sysctl{{established, 1}}}},
		{"be-liberal false leaves it", Tuning{TCPBeLiberal: false, UDPTimeout: time.Second}, 1,
			TuningPlan{Sysctls: []Sysctl{{udpTimeout, 1}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := PlanTuning(tt.tuning, tt.cpus); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PlanTuning(%+v, %d CPUs)\n got %+v\nwant %+v", tt.tuning, tt.cpus, got, tt.want)
			}
		})
	}
}

func TestCountCPUList(t *testing.T) {
	for list, want := range map[string]int{"0": 1, "0-1": 2, "0-3,6,8-9": 7, "": 0, "0-": 0, "3-1": 0, "x": 0} {
		if got := countCPUList(list); got != want {
			t.Errorf("countCPUList(%q) = %d, want %d", list, got, want)
		}
	}
	if got := CPUs(&FakeFiles{Files: map[string]string{cpusOnline: "0-5"}}); got != 6 {
		t.Errorf("CPUs with 0-5 online = %d, want 6", got)
	}
	if got := CPUs(&FakeFiles{}); got < 1 {
		t.Errorf("CPUs without /sys = %d, want Go's count", got)
	}
}

// kernelFiles is a fake host with the kernel's defaults.
func kernelFiles() *FakeFiles {
	return &FakeFiles{Files: map[string]string{
		sysctlRoot + maxSysctl:   "262144",
		sysctlRoot + established: "432000",
		sysctlRoot + closeWait:   "60",
		sysctlRoot + beLiberal:   "0",
		sysctlRoot + udpTimeout:  "30",
		sysctlRoot + udpStream:   "120",
		hashsizePath:             "262144",
	}}
}

func TestTune(t *testing.T) {
	readOnly := func(paths ...string) map[string]error {
		m := map[string]error{}
		for _, p := range paths {
			m[p] = syscall.EROFS
		}
		return m
	}
	all := []string{sysctlRoot + maxSysctl, sysctlRoot + established, sysctlRoot + closeWait, hashsizePath}
	tests := []struct {
		name       string
		plan       TuningPlan
		files      func(*FakeFiles)
		wantWrites []string
		// wantErrs are substrings of each error, in order.
		wantErrs []string
	}{
		{
			name: "kube-proxy's defaults on the host",
			plan: PlanTuning(kubeProxyDefaults, 2),
			wantWrites: []string{"/proc/sys/" + maxSysctl + "=131072", "/proc/sys/" + established + "=86400",
				"/proc/sys/" + closeWait + "=3600"},
		},
		{
			name: "settings already right are not written",
			plan: PlanTuning(kubeProxyDefaults, 2),
			files: func(f *FakeFiles) {
				f.Files[sysctlRoot+maxSysctl] = "131072"
				f.Files[sysctlRoot+established] = "86400"
			},
			wantWrites: []string{"/proc/sys/" + closeWait + "=3600"},
		},
		{
			name:       "a small hash size is raised to a quarter of the limit",
			plan:       TuningPlan{Max: 1 << 20},
			files:      func(f *FakeFiles) { f.Files[hashsizePath] = "65536" },
			wantWrites: []string{"/proc/sys/" + maxSysctl + "=1048576", hashsizePath + "=262144"},
		},
		{
			name:       "a read-only /sys keeps the hash size, with a warning",
			plan:       TuningPlan{Max: 1 << 20},
			files:      func(f *FakeFiles) { f.Files[hashsizePath] = "65536"; f.Errs = readOnly(hashsizePath) },
			wantWrites: []string{"/proc/sys/" + maxSysctl + "=1048576"},
			wantErrs:   []string{"conntrack hash size 65536 is below nf_conntrack_max/4 = 262144; not raised: /sys is read-only"},
		},
		{
			name:  "a read-only /proc/sys: a warning for each setting, nothing written",
			plan:  PlanTuning(kubeProxyDefaults, 2),
			files: func(f *FakeFiles) { f.Errs = readOnly(all...) },
			wantErrs: []string{
				maxSysctl + "=131072: /proc/sys is read-only here", established + "=86400: /proc/sys is read-only here",
				closeWait + "=3600: /proc/sys is read-only here",
			},
		},
		{
			name: "another network namespace: the limit is read-only, the timeouts are set",
			plan: PlanTuning(kubeProxyDefaults, 2),
			files: func(f *FakeFiles) {
				f.Errs = map[string]error{sysctlRoot + maxSysctl: syscall.EACCES}
			},
			wantWrites: []string{"/proc/sys/" + established + "=86400", "/proc/sys/" + closeWait + "=3600"},
			wantErrs:   []string{maxSysctl + "=131072: read-only outside the host's network namespace (--conntrack-max-per-core=0 leaves it alone"},
		},
		{
			name: "another network namespace whose limit is right already: the host's hash size is not touched",
			plan: TuningPlan{Max: 1 << 20},
			files: func(f *FakeFiles) {
				f.Files[sysctlRoot+maxSysctl], f.Files[hashsizePath] = "1048576", "65536"
				f.Errs = map[string]error{sysctlRoot + maxSysctl: syscall.EACCES}
			},
			wantErrs: []string{"not raised from outside the host's network namespace"},
		},
		{
			name:     "no nf_conntrack: the settings do not exist",
			plan:     PlanTuning(Tuning{UDPTimeout: time.Minute}, 1),
			files:    func(f *FakeFiles) { f.Files = map[string]string{} },
			wantErrs: []string{udpTimeout + "=60: the kernel has no such setting"},
		},
		{
			name:       "an unreadable hash size",
			plan:       TuningPlan{Max: 1 << 20},
			files:      func(f *FakeFiles) { f.Files[hashsizePath] = "lots" },
			wantWrites: []string{"/proc/sys/" + maxSysctl + "=1048576"},
			wantErrs:   []string{`reading the conntrack hash size /sys/module/nf_conntrack/parameters/hashsize: "lots\n"`},
		},
		{"an empty plan does nothing", TuningPlan{}, nil, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			files := kernelFiles()
			if tt.files != nil {
				tt.files(files)
			}
			core, logs := observer.New(zap.DebugLevel)
			errs := Tune(files, tt.plan, zap.New(core))
			if !reflect.DeepEqual(files.Writes, tt.wantWrites) {
				t.Errorf("writes\n%s\nwant\n%s", strings.Join(files.Writes, "\n"), strings.Join(tt.wantWrites, "\n"))
			}
			if len(errs) != len(tt.wantErrs) {
				t.Fatalf("errors %q, want %d: %q", errs, len(tt.wantErrs), tt.wantErrs)
			}
			for i, err := range errs {
				if !strings.Contains(err.Error(), tt.wantErrs[i]) {
					t.Errorf("error %d: %q, want it to say %q", i, err, tt.wantErrs[i])
				}
			}
			if warned := logs.FilterLevelExact(zap.WarnLevel).Len(); warned != len(errs) {
				t.Errorf("%d warnings logged for %d failures", warned, len(errs))
			}
			if set := logs.FilterMessage("set sysctl").Len(); set != len(files.Writes)-
				logs.FilterMessage("raised the conntrack hash size").Len() {
				t.Errorf("%d sysctls logged as set, %d writes", set, len(files.Writes))
			}
		})
	}
}

func TestTuneKeepsTheKernelsError(t *testing.T) {
	files := kernelFiles()
	files.Errs = map[string]error{sysctlRoot + established: syscall.EROFS}
	errs := Tune(files, PlanTuning(Tuning{TCPEstablishedTimeout: time.Hour}, 1), zaptest.NewLogger(t))
	if len(errs) != 1 || !errors.Is(errs[0], syscall.EROFS) {
		t.Errorf("errors %v, want the one EROFS", errs)
	}
}
