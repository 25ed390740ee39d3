//go:build linux

package conns

import (
	"bytes"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// A format file as Linux 6.18 prints it.
const sockStateFormat = `name: inet_sock_set_state
ID: 2287
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:const void * skaddr;	offset:8;	size:8;	signed:0;
	field:int oldstate;	offset:16;	size:4;	signed:1;
	field:int newstate;	offset:20;	size:4;	signed:1;
	field:__u16 sport;	offset:24;	size:2;	signed:0;
	field:__u16 dport;	offset:26;	size:2;	signed:0;
	field:__u16 family;	offset:28;	size:2;	signed:0;
	field:__u16 protocol;	offset:30;	size:2;	signed:0;
	field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
	field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
	field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
	field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;

print fmt: "family=%s protocol=%s sport=%hu dport=%hu", __print_symbolic(REC->family, { 2, "AF_INET" })
`

func TestParseTraceFormat(t *testing.T) {
	fields, err := parseTraceFormat([]byte(sockStateFormat))
	if err != nil {
		t.Fatalf("parseTraceFormat: %v", err)
	}
	if len(fields) != 15 {
		t.Errorf("parseTraceFormat found %d fields, want 15", len(fields))
	}
	for name, want := range map[string]traceField{
		"common_pid": {Offset: 4, Size: 4, Signed: true},
		"skaddr":     {Offset: 8, Size: 8},
		"newstate":   {Offset: 20, Size: 4, Signed: true},
		"daddr":      {Offset: 36, Size: 4},
		"daddr_v6":   {Offset: 56, Size: 16},
	} {
		if got := fields[name]; got != want {
			t.Errorf("field %s = %+v, want %+v", name, got, want)
		}
	}
	l, err := sockStateLayoutFrom(fields)
	if err != nil {
		t.Fatalf("sockStateLayoutFrom: %v", err)
	}
	want := sockStateLayout{
		Newstate: traceField{20, 4, true}, Protocol: traceField{30, 2, false}, Family: traceField{28, 2, false},
		Dport: traceField{26, 2, false}, Daddr: traceField{36, 4, false}, DaddrV6: traceField{56, 16, false},
	}
	if l != want {
		t.Errorf("sockStateLayoutFrom = %+v, want %+v", l, want)
	}
}

func TestParseTraceFormatErrors(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
	}{
		{"empty", "", "no fields"},
		{"no fields", "name: x\nID: 1\nformat:\n", "no fields"},
		{"missing size", "\tfield:int a;\toffset:8;\n", "want field, offset, size and signed"},
		{"keys out of order", "\tfield:int a;\tsize:4;\toffset:8;\tsigned:1;\n", "want offset:N"},
		{"bad number", "\tfield:int a;\toffset:-8;\tsize:4;\tsigned:1;\n", "offset"},
		{"huge number", "\tfield:int a;\toffset:99999999;\tsize:4;\tsigned:1;\n", "offset"},
		{"bad signed", "\tfield:int a;\toffset:8;\tsize:4;\tsigned:2;\n", "signed:2"},
		{"no name", "\tfield:int *;\toffset:8;\tsize:4;\tsigned:1;\n", "no field name"},
		{"duplicate", "\tfield:int a;\toffset:8;\tsize:4;\tsigned:1;\n\tfield:int a;\toffset:12;\tsize:4;\tsigned:1;\n", "twice"},
		{"too big", strings.Repeat("x", maxFormatBytes+1), "more than"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseTraceFormat([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseTraceFormat(%.40q) error = %v, want it to contain %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestFieldName(t *testing.T) {
	for decl, want := range map[string]string{
		"const void * skaddr":    "skaddr",
		"const void *skaddr":     "skaddr",
		"__u8 saddr[4]":          "saddr",
		"__u8 saddr [4]":         "saddr",
		"__data_loc char[] name": "name",
		"unsigned long long ts":  "ts",
		"int":                    "int",
	} {
		got, err := fieldName(decl)
		if err != nil || got != want {
			t.Errorf("fieldName(%q) = %q, %v, want %q", decl, got, err, want)
		}
	}
	for _, decl := range []string{"", "char *", "int 9x", "int a-b"} {
		if got, err := fieldName(decl); err == nil {
			t.Errorf("fieldName(%q) = %q, want an error", decl, got)
		}
	}
}

func TestSockStateLayoutErrors(t *testing.T) {
	base, err := parseTraceFormat([]byte(sockStateFormat))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		change func(map[string]traceField)
		want   string
	}{
		{"missing protocol", func(m map[string]traceField) { delete(m, "protocol") }, `no field "protocol"`},
		{"wide daddr", func(m map[string]traceField) { m["daddr"] = traceField{Offset: 36, Size: 8} }, "size 8"},
		{"in common fields", func(m map[string]traceField) { m["newstate"] = traceField{Offset: 4, Size: 4} }, "outside"},
		{"past the record", func(m map[string]traceField) { m["daddr_v6"] = traceField{Offset: 2040, Size: 16} }, "outside"},
		{"unaligned", func(m map[string]traceField) { m["dport"] = traceField{Offset: 27, Size: 2} }, "not aligned"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := make(map[string]traceField)
			for k, v := range base {
				m[k] = v
			}
			tc.change(m)
			if _, err := sockStateLayoutFrom(m); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("sockStateLayoutFrom error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestCopyFieldAlignment(t *testing.T) {
	for _, tc := range []struct {
		f          traceField
		evOff      int
		wantWidths []int
	}{
		{traceField{Offset: 56, Size: 16}, 48, []int{8, 8}},
		{traceField{Offset: 36, Size: 4}, 44, []int{4}},
		{traceField{Offset: 34, Size: 16}, 48, []int{2, 2, 2, 2, 2, 2, 2, 2}},
		{traceField{Offset: 34, Size: 16}, 50, []int{2, 4, 8, 2}},
		{traceField{Offset: 33, Size: 4}, 44, []int{1, 1, 1, 1}},
	} {
		insns := copyField(7, tc.evOff, 6, tc.f)
		var widths []int
		for i := 0; i < len(insns); i += 2 {
			ld, st := insns[i], insns[i+1]
			w := ld.OpCode.Size().Sizeof()
			if st.OpCode.Size().Sizeof() != w {
				t.Fatalf("copyField(%+v): load and store widths differ", tc.f)
			}
			if int(ld.Offset)%w != 0 || int(st.Offset)%w != 0 {
				t.Errorf("copyField(%+v, %d): %d-byte access at %d/%d is unaligned", tc.f, tc.evOff, w, ld.Offset, st.Offset)
			}
			widths = append(widths, w)
		}
		if diff := cmp.Diff(tc.wantWidths, widths); diff != "" {
			t.Errorf("copyField(%+v, %d) widths (-want +got):\n%s", tc.f, tc.evOff, diff)
		}
	}
}

const cid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestParseProcCgroup(t *testing.T) {
	for _, tc := range []struct {
		name, in, wantPath, wantID string
	}{
		{"host v1 hybrid", "9:name=systemd:/\n4:memory:/user.slice\n0::/\n", "/user.slice", ""},
		{"host v2", "0::/system.slice/ssh.service\n", "/system.slice/ssh.service", ""},
		{"root only", "0::/\n", "/", ""},
		{"docker cgroupfs v1", "12:pids:/docker/" + cid + "\n1:name=systemd:/docker/" + cid + "\n0::/\n", "/docker/" + cid, cid},
		{"docker cgroupfs v2", "0::/docker/" + cid + "\n", "/docker/" + cid, cid},
		{"docker systemd", "0::/system.slice/docker-" + cid + ".scope\n", "/system.slice/docker-" + cid + ".scope", cid},
		{"containerd cri systemd", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-" + cid + ".scope\n", "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b.slice/cri-containerd-" + cid + ".scope", cid},
		{"crio", "0::/kubepods.slice/kubepods-pod9.slice/crio-" + cid + ".scope\n", "/kubepods.slice/kubepods-pod9.slice/crio-" + cid + ".scope", cid},
		{"crio conmon is not the container", "0::/kubepods.slice/kubepods-pod9.slice/crio-conmon-" + cid + ".scope\n", "/kubepods.slice/kubepods-pod9.slice/crio-conmon-" + cid + ".scope", ""},
		{"kubepods cgroupfs", "3:cpu:/kubepods/besteffort/pod5f0e/" + cid + "\n", "/kubepods/besteffort/pod5f0e/" + cid, cid},
		{"private cgroupns", "0::/../../kubepods-besteffort-pod1.slice/cri-containerd-" + cid + ".scope\n", "/../../kubepods-besteffort-pod1.slice/cri-containerd-" + cid + ".scope", cid},
		{"podman", "0::/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cid + ".scope/container\n", "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-" + cid + ".scope/container", cid},
		{"nested docker: the inner one", "0::/docker/" + cid + "/docker/" + strings.Repeat("f", 64) + "\n", "/docker/" + cid + "/docker/" + strings.Repeat("f", 64), strings.Repeat("f", 64)},
		{"buildkit has no 64-hex ID", "0::/docker/buildkit/k3x9v0n2m7q8w1e4r5t6y7u8i\n", "/docker/buildkit/k3x9v0n2m7q8w1e4r5t6y7u8i", ""},
		{"uppercase is not an ID", "0::/docker/" + strings.ToUpper(cid) + "\n", "/docker/" + strings.ToUpper(cid), ""},
		{"63 hex", "0::/docker/" + cid[1:] + "\n", "/docker/" + cid[1:], ""},
		{"garbage", "not a cgroup file\n::\n", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path, id := parseProcCgroup(tc.in)
			if path != tc.wantPath || id != tc.wantID {
				t.Errorf("parseProcCgroup(%q) = %q, %q, want %q, %q", tc.in, path, id, tc.wantPath, tc.wantID)
			}
		})
	}
}

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in       string
		wantComm string
		wantPPID int
		wantErr  bool
	}{
		{"4242 (wget) S 4241 4242 1 0 -1 4194560 96 0 0 0 0 0 0 0 20 0 1 0 1234 1200128 200 18446744073709551615", "wget", 4241, false},
		{"7 (a) b (c)) R 1 7 7 0", "a) b (c)", 1, false},
		{"7 (tmux: server) S 0 7", "tmux: server", 0, false},
		{"7 (x) S", "", 0, true},
		{"7 x S 1", "", 0, true},
		{"7 (x) S -1", "", 0, true},
		{"", "", 0, true},
	} {
		comm, ppid, err := parseStat([]byte(tc.in))
		if (err != nil) != tc.wantErr || comm != tc.wantComm || ppid != tc.wantPPID {
			t.Errorf("parseStat(%q) = %q, %d, %v, want %q, %d, error %v", tc.in, comm, ppid, err, tc.wantComm, tc.wantPPID, tc.wantErr)
		}
	}
}

// Lines as Linux 6.18 prints them.
const (
	realTCP = `  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode                                                     
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1671 1 0000000055eaf5ef 100 0 0 10 0                      
   1: 1700007F:88E5 00000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 38580 2 00000000c8a0e69f 100 0 0 10 0                     
   2: 1700007F:88E5 0100007F:A4E8 01 00000000:00000000 00:00000000 00000000  1000        0 0 1 000000008c87b11c 20 0 0 10 -1                         
   3: 0100007F:A4EA 1700007F:88E5 02 00000001:00000000 01:00000064 00000002     0        0 38590 2 000000008c87b11c 20 0 0 10 -1
`
	realTCP6 = `  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:BF2D 00000000000000000000000000000000:0000 0A 00000000:00000001 00:00000000 00000000     0        0 38577 2 00000000d689e2f0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:A4E8 0000000000000000FFFF00001700007F:88E5 01 00000000:00000000 00:00000000 00000000     0        0 38581 2 00000000ec42d26e 20 0 0 10 -1
   4: 00000000000000000000000001000000:84F6 00000000000000000000000001000000:BF2D 01 00000000:00000000 00:00000000 00000000     0        0 38578 2 0000000049732edd 20 0 0 10 -1
   5: B80D0120000000000000000001000000:C350 B80D0120000000000000000002000000:01BB 02 00000000:00000000 00:00000000 00000000     0        0 38600 2 0000000049732edd 20 0 0 10 -1
`
)

func TestParseProcNetTCP(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want []tcpEntry
	}{
		{"tcp", realTCP, []tcpEntry{
			{Local: netip.MustParseAddrPort("0.0.0.0:2024"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), State: tcpListen, Inode: 1671},
			{Local: netip.MustParseAddrPort("127.0.0.23:35045"), Remote: netip.MustParseAddrPort("0.0.0.0:0"), State: tcpListen, Inode: 38580},
			{Local: netip.MustParseAddrPort("127.0.0.23:35045"), Remote: netip.MustParseAddrPort("127.0.0.1:42216"), State: tcpEstablished, UID: 1000},
			{Local: netip.MustParseAddrPort("127.0.0.1:42218"), Remote: netip.MustParseAddrPort("127.0.0.23:35045"), State: tcpSynSent, Inode: 38590},
		}},
		{"tcp6", realTCP6, []tcpEntry{
			{Local: netip.MustParseAddrPort("[::1]:48941"), Remote: netip.MustParseAddrPort("[::]:0"), State: tcpListen, Inode: 38577},
			{Local: netip.MustParseAddrPort("[::ffff:127.0.0.1]:42216"), Remote: netip.MustParseAddrPort("[::ffff:127.0.0.23]:35045"), State: tcpEstablished, Inode: 38581},
			{Local: netip.MustParseAddrPort("[::1]:34038"), Remote: netip.MustParseAddrPort("[::1]:48941"), State: tcpEstablished, Inode: 38578},
			{Local: netip.MustParseAddrPort("[2001:db8::1]:50000"), Remote: netip.MustParseAddrPort("[2001:db8::2]:443"), State: tcpSynSent, Inode: 38600},
		}},
		{"header only", "  sl  local_address rem_address   st\n", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []tcpEntry
			if err := parseProcNetTCP(strings.NewReader(tc.in), func(e tcpEntry) { got = append(got, e) }); err != nil {
				t.Fatalf("parseProcNetTCP: %v", err)
			}
			if diff := cmp.Diff(tc.want, got, addrPorts); diff != "" {
				t.Errorf("parseProcNetTCP (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseProcNetTCPErrors(t *testing.T) {
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	for _, tc := range []struct {
		name, in, want string
	}{
		{"no header", "   0: 00000000:07E8 00000000:0000 0A 0:0 0:0 0 0 0 1671\n", "not the header"},
		{"short line", header + "   0: 00000000:07E8 00000000:0000 0A\n", "line 2: 4 fields"},
		{"bad slot", header + "   0 00000000:07E8 00000000:0000 0A 0:0 0:0 0 0 0 1671\n", "slot"},
		{"odd address", header + "   0: 0000000:07E8 00000000:0000 0A 0:0 0:0 0 0 0 1671\n", "7 hex digits"},
		{"not hex", header + "   0: 0000000G:07E8 00000000:0000 0A 0:0 0:0 0 0 0 1671\n", "not hex"},
		{"no port", header + "   0: 00000000 00000000:0000 0A 0:0 0:0 0 0 0 1671\n", "not ADDR:PORT"},
		{"mixed families", header + "   0: 00000000:07E8 00000000000000000000000000000000:0000 0A 0:0 0:0 0 0 0 1671\n", "different families"},
		{"bad state", header + "   0: 00000000:07E8 00000000:0000 XYZ 0:0 0:0 0 0 0 1671\n", "state"},
		{"bad uid", header + "   0: 00000000:07E8 00000000:0000 0A 0:0 0:0 0 -1 0 1671\n", "uid"},
		{"bad inode", header + "   0: 00000000:07E8 00000000:0000 0A 0:0 0:0 0 0 0 x\n", "inode"},
		{"long line", header + strings.Repeat("0", maxTCPLine+1) + "\n", "too long"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := parseProcNetTCP(strings.NewReader(tc.in), func(tcpEntry) {})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("parseProcNetTCP error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

// FuzzParseTraceFormat: any input gives fields or an error, never a panic;
// a layout it accepts assembles into a program with in-range offsets.
func FuzzParseTraceFormat(f *testing.F) {
	f.Add([]byte(sockStateFormat))
	f.Add([]byte("\tfield:__u8 a[4];\toffset:9;\tsize:4;\tsigned:0;\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fields, err := parseTraceFormat(data)
		if err != nil {
			return
		}
		for name, fl := range fields {
			if !isIdent(name) || fl.Offset < 0 || fl.Size < 0 || fl.Offset > 0xFFFF || fl.Size > 0xFFFF {
				t.Fatalf("parseTraceFormat gave field %q %+v", name, fl)
			}
		}
		l, err := sockStateLayoutFrom(fields)
		if err != nil {
			return
		}
		insns := buildProgram(l, taskOffsets{RealParent: 100, Tgid: 200}, 3, 4)
		for _, ins := range insns {
			if ins.Src == 6 && ins.OpCode.Class().IsLoad() && (ins.Offset < minTraceOffset || int(ins.Offset)+ins.OpCode.Size().Sizeof() > maxTraceRecord || int(ins.Offset)%ins.OpCode.Size().Sizeof() != 0) {
				t.Fatalf("layout %+v gave context load %v", l, ins)
			}
		}
	})
}

// FuzzParseProcCgroup: an ID is only ever 64 lowercase hex digits taken
// from the input, and the path is bounded.
func FuzzParseProcCgroup(f *testing.F) {
	f.Add("12:pids:/docker/" + cid + "\n0::/\n")
	f.Add("0::/kubepods.slice/kubepods-pod9.slice/crio-conmon-" + cid + ".scope\n")
	f.Add("0::/system.slice/docker-" + cid + ".scope\n")
	f.Fuzz(func(t *testing.T, data string) {
		path, id := parseProcCgroup(data)
		if len(path) > maxCgroupPath {
			t.Fatalf("path of %d bytes", len(path))
		}
		if path != "" && !strings.Contains(data, path) {
			t.Fatalf("path %q not in input", path)
		}
		if id != "" && (!IsContainerID(id) || !strings.Contains(data, id)) {
			t.Fatalf("container ID %q", id)
		}
	})
}

// FuzzParseProcNetTCP: no panic, and every entry holds two addresses of one
// family.
func FuzzParseProcNetTCP(f *testing.F) {
	f.Add([]byte(realTCP))
	f.Add([]byte(realTCP6))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = parseProcNetTCP(bytes.NewReader(data), func(e tcpEntry) {
			if !e.Local.IsValid() || !e.Remote.IsValid() || e.Local.Addr().BitLen() != e.Remote.Addr().BitLen() {
				t.Fatalf("entry %+v", e)
			}
		})
	})
}

// FuzzParseStat: no panic; a parsed comm comes from between the parentheses.
func FuzzParseStat(f *testing.F) {
	f.Add([]byte("4242 (wget) S 4241 4242 1 0 -1"))
	f.Add([]byte("7 (a) b (c)) R 1 7 7 0"))
	f.Fuzz(func(t *testing.T, data []byte) {
		comm, ppid, err := parseStat(data)
		if err == nil && (ppid < 0 || !bytes.Contains(data, []byte("("+comm+")"))) {
			t.Fatalf("parseStat(%q) = %q, %d", data, comm, ppid)
		}
	})
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/sys/kernel/tracing`:   "/sys/kernel/tracing",
		`/mnt/with\040space`:    "/mnt/with space",
		`/odd\04`:               `/odd\04`,
		`/not\999octal`:         `/not\999octal`,
		`/tab\011and\134slash`:  "/tab\tand\\slash",
		`/trailing\`:            `/trailing\`,
		`/x\040`:                "/x ",
		`\040`:                  " ",
		`/plain/path/no/escape`: "/plain/path/no/escape",
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
