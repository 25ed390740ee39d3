package evidence

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"buildguard.dev/buildguard/internal/testpostgres"
)

// benchBackend opens an empty store of one backend for a benchmark.
type benchBackend struct {
	name string
	open func(b *testing.B) Store
}

func benchBackends() []benchBackend {
	return []benchBackend{
		{"sqlite", func(b *testing.B) Store {
			s, err := OpenSQLite(context.Background(), filepath.Join(b.TempDir(), "evidence.db"))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(func() { s.Close() })
			return s
		}},
		{"postgres", func(b *testing.B) Store {
			srv := testpostgres.Start(b)
			return openPostgresDSN(b, srv.NewDatabase(b))
		}},
	}
}

const (
	benchConns   = 1_000_000
	benchNodes   = 50
	benchSpan    = 7 * 24 * time.Hour // the seeded connections' time range: a week of retention
	benchReport  = 1000               // items per seeding report
	benchBuilds  = 100_000
	benchSeedRNG = 1612
)

// seedConnections stores n connections spread over benchSpan from stT0 and
// over benchNodes nodes, a node's about every benchSpan*benchNodes/n. They
// arrive roughly in time order, as they would from the nodes.
func seedConnections(b *testing.B, s Store, n int) {
	b.Helper()
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(benchSeedRNG, 0))
	start := time.Now()
	for i := 0; i < n; {
		r := Report{Sensor: "ebpf"}
		for ; i < n && len(r.Connections) < benchReport; i++ {
			r.Connections = append(r.Connections, Connection{
				Source: "agent", EventID: fmt.Sprint("seed-", i), Node: fmt.Sprint("node-", rng.IntN(benchNodes)),
				Time:    stT0.Add(time.Duration(int64(benchSpan)/int64(n)*int64(i) - rng.Int64N(int64(time.Second)))),
				Process: "curl", PID: 1000 + rng.IntN(30000), Cmdline: "curl -fsSL https://deb.example/pkg.tar.gz -o /tmp/pkg.tar.gz",
				ContainerID: "3f2b9c", CgroupID: "/kubepods/burstable/pod1234/3f2b9c",
				DestIP: netip.AddrFrom4([4]byte{10, byte(rng.IntN(256)), byte(rng.IntN(256)), byte(rng.IntN(256))}), DestPort: 443,
				DestName: "deb.example",
			})
		}
		if _, _, err := s.AddReport(ctx, r); err != nil {
			b.Fatal(err)
		}
	}
	d := time.Since(start)
	b.Logf("seeded %d connections in %v: %.0f connections/s", n, d.Round(time.Millisecond), float64(n)/d.Seconds())
}

// BenchmarkConnectionsLookup is the admission-time lookup of a node's
// connections around a build, with 1,000,000 connections of 50 nodes
// stored (about 29 per node per 10 minutes).
func BenchmarkConnectionsLookup(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			seedConnections(b, s, benchConns)
			for _, tc := range []struct {
				name   string
				window time.Duration
				span   time.Duration // windows start at random in the last span of the data
			}{
				// A build's buildWindow around it, anywhere in the week.
				{"random/window=10m", 10 * time.Minute, benchSpan},
				{"random/window=1h", time.Hour, benchSpan},
				// What admission asks most: an image built minutes ago.
				{"recent/window=10m", 10 * time.Minute, time.Hour},
			} {
				b.Run(tc.name, func(b *testing.B) {
					ctx := context.Background()
					rng := rand.New(rand.NewPCG(1, 2))
					rows := 0
					for b.Loop() {
						from := stT0.Add(benchSpan - tc.span + time.Duration(rng.Int64N(int64(tc.span-tc.window))))
						cs, err := s.Connections(ctx, fmt.Sprint("node-", rng.IntN(benchNodes)), from, from.Add(tc.window), DefaultLimit)
						if err != nil {
							b.Fatal(err)
						}
						rows += len(cs)
					}
					b.ReportMetric(float64(rows)/float64(b.N), "rows/op")
				})
			}
		})
	}
}

// BenchmarkBuildsLookup looks builds up by image ID and by tag with
// 100,000 builds stored, each with two tags, 20 builds per tag.
func BenchmarkBuildsLookup(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			ctx := context.Background()
			for i := 0; i < benchBuilds; {
				var r Report
				for ; i < benchBuilds && len(r.Builds) < benchReport; i++ {
					bd := stBuild(fmt.Sprint("seed-", i), fmt.Sprintf("sha256:%064x", i), stT0.Add(time.Duration(i)*time.Second),
						fmt.Sprintf("reg.example/app%d:%d", i%5000, i), fmt.Sprintf("reg.example/app%d:latest", i%5000))
					// On 37 nodes: the 20 builds of a :latest tag are on 20
					// of them (lookups return at most MaxBuildsPerNode of
					// a node).
					bd.Node = fmt.Sprint("node-", i%37)
					r.Builds = append(r.Builds, bd)
				}
				if _, _, err := s.AddReport(ctx, r); err != nil {
					b.Fatal(err)
				}
			}
			b.Run("ImageID", func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				for b.Loop() {
					bs, err := s.BuildsByImageID(ctx, fmt.Sprintf("sha256:%064x", rng.IntN(benchBuilds)))
					if err != nil || len(bs) != 1 {
						b.Fatalf("BuildsByImageID = %d, %v", len(bs), err)
					}
				}
			})
			b.Run("Tag", func(b *testing.B) {
				rng := rand.New(rand.NewPCG(1, 2))
				for b.Loop() {
					bs, err := s.BuildsByTag(ctx, fmt.Sprintf("reg.example/app%d:latest", rng.IntN(5000)), 5)
					if err != nil || len(bs) != 5 {
						b.Fatalf("BuildsByTag = %d, %v", len(bs), err)
					}
				}
			})
		})
	}
}

// BenchmarkAddReport is write throughput: reports of 1 build and 20
// connections, each a durable transaction, from one writer and from
// several at once.
func BenchmarkAddReport(b *testing.B) {
	for _, be := range benchBackends() {
		b.Run(be.name, func(b *testing.B) {
			s := be.open(b)
			var seq atomic.Int64
			report := func() Report {
				id := seq.Add(1)
				r := Report{Node: "node-1", Builds: []Build{stBuild(fmt.Sprint("b", id), fmt.Sprintf("sha256:%064x", id), stT0, "reg.example/app:1")}}
				for j := range 20 {
					r.Connections = append(r.Connections, stConn(fmt.Sprintf("c%d-%d", id, j), "node-1", stT0.Add(time.Duration(id)*time.Millisecond), "192.0.2.1"))
				}
				return r
			}
			b.Run("serial", func(b *testing.B) {
				ctx := context.Background()
				for b.Loop() {
					if _, _, err := s.AddReport(ctx, report()); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
				b.ReportMetric(float64(21*b.N)/b.Elapsed().Seconds(), "items/s")
			})
			b.Run("parallel", func(b *testing.B) {
				b.SetParallelism(4)
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						if _, _, err := s.AddReport(context.Background(), report()); err != nil {
							b.Error(err)
							return
						}
					}
				})
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reports/s")
				b.ReportMetric(float64(21*b.N)/b.Elapsed().Seconds(), "items/s")
			})
		})
	}
}
