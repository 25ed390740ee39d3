package nodereport

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// The fuzz tests check, for any body, what checkParsed checks — no panic,
// every item accounted for once, complete and bounded builds and
// connections — and that parsing twice gives the same result. Their seed
// corpora are testdata/fuzz/FuzzParse*/ and the fixtures.

// addFixtures adds the fixtures of a format as seeds.
func addFixtures(f *testing.F, format string, add func(body []byte)) {
	paths, err := filepath.Glob(filepath.Join("testdata", "fixtures", format, "*"))
	if err != nil {
		f.Fatal(err)
	}
	for _, p := range paths {
		if filepath.Ext(p) == ".golden" {
			continue
		}
		body, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		add(body)
	}
}

// parseWatchdog crashes the test binary, and so makes the fuzzer keep the
// input, when a parse does not return within 10s: linear parsing of a
// capped body takes milliseconds.
func parseWatchdog(format string, body []byte) *time.Timer {
	return time.AfterFunc(10*time.Second, func() { panic(fmt.Sprintf("Parse %s(%.200q) hangs", format, body)) })
}

func fuzzParser(f *testing.F, format string, seeds []string) {
	parse := parserFor(format)
	for _, s := range seeds {
		f.Add([]byte(s), "worker-3")
	}
	addFixtures(f, format, func(body []byte) { f.Add(body, "") })
	f.Fuzz(func(t *testing.T, body []byte, node string) {
		defer parseWatchdog(format, body).Stop()
		got, err := parse(body, node)
		checkParsed(t, format, body, got, err)
		if n := cleanText(node, limName); format == "docker" && n != "" {
			for _, b := range got.Report.Builds {
				if b.Node != n {
					t.Fatalf("ParseDocker(%q, %q): a build on node %q", body, node, b.Node)
				}
			}
		}
		again, err2 := parse(body, node)
		if diff := cmp.Diff(got, again, exact); diff != "" || (err == nil) != (err2 == nil) {
			t.Fatalf("Parse%s(%q) twice: errors %v then %v, results (-first +second):\n%s", format, body, err, err2, diff)
		}
	})
}

func FuzzParseAgent(f *testing.F) {
	for _, s := range []string{
		agentBody(`{"tool":"docker","started":"2026-11-26T10:00:00Z","imageID":"sha256:aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e","tags":["r/a:1"],"pids":[1,2]}`,
			`{"time":"2026-11-26T10:00:00Z","destIP":"::ffff:203.0.113.9","destPort":8080,"cmdline":"wget\u0000http://x"}`),
		agentBody(`{"tool":"docker","started":"2026-11-26T10:00:00Z","finished":"2026-11-26T09:00:00Z"}`, `{"time":"2126-11-26T10:00:00Z","destIP":"1.2.3.4","destPort":1}`),
		agentBody(`[]`, `"x",{"destIP":"fe80::1%eth0","destPort":65536,"time":"2026-11-26T10:00:00Z"}`),
		`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"n","sensor":"ebpf","extra":1}`,
		"\xef\xbb\xbf" + agentBody(``, ``),
		`{"apiVersion":"buildguard.dev/v1alpha1","kind":"NodeReport","node":"\u0000","sensor":"ebpf"}`,
	} {
		f.Add([]byte(s))
	}
	addFixtures(f, "agent", func(body []byte) { f.Add(body) })
	f.Fuzz(func(t *testing.T, body []byte) {
		defer parseWatchdog("agent", body).Stop()
		got, err := ParseAgent(body, parseTestClock())
		checkParsed(t, "agent", body, got, err)
		again, err2 := ParseAgent(body, parseTestClock())
		if diff := cmp.Diff(got, again, exact); diff != "" || (err == nil) != (err2 == nil) {
			t.Fatalf("ParseAgent(%q) twice: errors %v then %v, results (-first +second):\n%s", body, err, err2, diff)
		}
	})
}

func FuzzParseFalco(f *testing.F) {
	fuzzParser(f, "falco", []string{
		falcoAlertJSON("r", `"fd.name":"10.0.0.5:1->[2001:db8::9]:443","fd.type":"ipv6","proc.pid":"7"`),
		falcoAlertJSON("r", `"fd.rip":"::ffff:1.2.3.4","fd.rport":0,"evt.time":1795688103412907311`),
		`{"rule":"r","output_fields":{"fd.sip":"1.2.3.4","fd.sport":80,"evt.time":-1}}` + "\n" + `{"rule":"r"}` + "\n[]",
		`[{"rule":"r","time":"2026-11-26T10:00:00Z","output_fields":{"fd.name":"fd00::1:2->::1:3"}},1,null]`,
		"{\n \"rule\": \"r\",\n \"uuid\": \"u\"\n}\n{\"rule\":",
	})
}

func FuzzParseTetragon(f *testing.F) {
	fuzzParser(f, "tetragon", []string{
		tetragonKprobeJSON("tcp_connect", `{"sock_arg":{"family":"AF_INET6","daddr":"::ffff:203.0.113.9","dport":"443"}}`),
		tetragonKprobeJSON("__sys_connect", `{"int_arg":1},{"sockaddr_arg":{"family":"AF_INET","addr":"1.2.3.4","port":70000}}`),
		`{"process_exec":{"process":{"binary":"/usr/bin/buildah","arguments":"bud ."}},"time":"2026-11-26T10:00:00Z"}` + "\n{}\n",
		`{"process_kprobe":{"function_name":"tcp_connect","args":[{"sock_arg":null},{"sock_arg":{"daddr":"1.2.3.4","dport":1}}]},"time":"2026-11-26T10:00:00Z"}`,
	})
}

func FuzzParseDocker(f *testing.F) {
	fuzzParser(f, "docker", []string{
		`{"Type":"image","Action":"tag","Actor":{"ID":"sha256:aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e","Attributes":{"name":"r/a:1"}},"timeNano":1795688169000000000}`,
		`{"Type":"container","Action":"commit","Actor":{"ID":"c","Attributes":{"imageID":"aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e","imageRef":""}},"time":1795688169}`,
		`[{"status":"tag","id":"x"},{"Type":"builder","Action":"prune"},{"Type":"image","Action":"load","Actor":{"ID":"sha256:00"},"time":"1"}]`,
		`{"Type":"image","Action":"import","Actor":{"ID":"sha256:aa48458587ecea4728d4d28198a78ba1f6159b33f48705acb86d5bdaee7f926e"},"timeNano":9223372036854775807}`,
	})
}
