package review

import (
	"fmt"
	"strings"
)

// sparkline is a small bar chart drawn as inline SVG: one bar per point,
// scaled to the largest. It is an image to assistive technology, with
// Label as its text alternative; the counts it draws are also in the
// page's text, as links.
type sparkline struct {
	// Label says what the chart shows, every value included.
	Label  string
	Width  int
	Height int
	Bars   []bar
}

// bar is one point of a sparkline.
type bar struct {
	X, Y, W, H int
	N          int
	// Title is the bar's tooltip; Href, when set, links the bar to the
	// decisions it counts (for the mouse: the same link is in the text).
	Title, Href string
}

// Geometry of sparklines, in CSS pixels.
const (
	sparkBarW   = 12
	sparkGap    = 3
	sparkHeight = 36
	// A bar of a non-zero count is at least this tall; zero is a
	// baseline of 1.
	sparkMinBar = 2
)

// point is a value of a sparkline.
type point struct {
	Label string // what the value is of: a day, a scan
	N     int
	Href  string
}

// newSparkline draws points; what names the series in the text
// alternative ("deny per day").
func newSparkline(what string, points []point) sparkline {
	sl := sparkline{Width: len(points)*(sparkBarW+sparkGap) - sparkGap, Height: sparkHeight}
	if sl.Width < 0 {
		sl.Width = 0
	}
	peak, total, peakAt := 0, 0, ""
	vals := make([]string, len(points))
	for i, p := range points {
		total += p.N
		if p.N > peak {
			peak, peakAt = p.N, p.Label
		}
		vals[i] = fmt.Sprint(p.N)
	}
	for i, p := range points {
		h := 1
		if p.N > 0 {
			h = max(sparkMinBar, (p.N*sparkHeight+peak/2)/peak)
		}
		sl.Bars = append(sl.Bars, bar{X: i * (sparkBarW + sparkGap), Y: sparkHeight - h, W: sparkBarW, H: h, N: p.N,
			Title: fmt.Sprintf("%s: %d", p.Label, p.N), Href: p.Href})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s", what)
	if len(points) > 0 {
		fmt.Fprintf(&b, ", %s to %s: %s", points[0].Label, points[len(points)-1].Label, strings.Join(vals, ", "))
	}
	fmt.Fprintf(&b, ". %d in all", total)
	if peak > 0 {
		fmt.Fprintf(&b, "; most on %s (%d)", peakAt, peak)
	}
	b.WriteString(".")
	sl.Label = b.String()
	return sl
}
