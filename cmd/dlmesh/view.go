package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/rivo/uniseg"
	"golang.org/x/term"
)

// cell is one position of the block being denoised, as the live view draws it.
type cell struct {
	text   string
	masked bool
	prompt bool
	beyond bool // past gen_length: decoded with its block but not returned (drawn dim)
	mark   int  // markNone, markUnmask, markEdit: what the last step did here
}

const (
	markNone = iota
	markUnmask
	markEdit
)

// view is the live terminal view of `run` and `generate`: committed text above, the current
// block below it with masked positions as placeholders and the last step's unmasks and edits
// highlighted, and a status line. On a non-terminal it prints only the committed text.
type view struct {
	w        io.Writer
	tty      bool
	width    int
	lastCol  int // display column where the committed text ends
	live     int // lines the live region occupies below the committed text's last line
	colorize bool
}

func newView(w io.Writer) *view {
	v := &view{w: w, width: 80}
	if f, ok := w.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		v.tty, v.colorize = true, os.Getenv("NO_COLOR") == ""
		if wd, _, err := term.GetSize(int(f.Fd())); err == nil && wd > 10 {
			v.width = wd
		}
	}
	return v
}

func (v *view) style(code, s string) string {
	if !v.colorize {
		return s
	}
	return "\033[" + code + "m" + s + "\033[0m"
}

// visible shows whitespace inside the live block so that it stays on its lines.
func visible(s string) string {
	r := strings.NewReplacer("\n", "⏎", "\t", "→", "\r", "␍")
	return r.Replace(s)
}

func (v *view) clear() {
	if !v.tty || v.live == 0 {
		return
	}
	fmt.Fprintf(v.w, "\r\033[%dA", v.live)
	if v.lastCol > 0 {
		fmt.Fprintf(v.w, "\033[%dC", v.lastCol)
	}
	fmt.Fprint(v.w, "\033[J")
	v.live = 0
}

// draw replaces the live region with the block and a status line.
func (v *view) draw(cells []cell, status string) {
	if !v.tty {
		return
	}
	v.clear()
	var b strings.Builder
	width := 0
	for _, c := range cells {
		var s string
		switch {
		case c.masked:
			s = "░"
			b.WriteString(v.style("2", s))
		default:
			s = visible(c.text)
			switch {
			case c.prompt:
				b.WriteString(v.style("2;3", s))
			case c.beyond:
				b.WriteString(v.style("2", s))
			case c.mark == markUnmask:
				b.WriteString(v.style("1;32", s))
			case c.mark == markEdit:
				b.WriteString(v.style("1;33;4", s))
			default:
				b.WriteString(s)
			}
		}
		width += uniseg.StringWidth(s)
	}
	fmt.Fprint(v.w, "\n", b.String(), "\n", v.style("2", status))
	// The cursor sits on the status line's last row; live is the number of rows to climb back
	// to the committed text's last line.
	v.live = v.rows(width) + v.rows(uniseg.StringWidth(status))
}

// commit prints finished text above the live region.
func (v *view) commit(text string) {
	v.clear()
	fmt.Fprint(v.w, text)
	if i := strings.LastIndexByte(text, '\n'); i >= 0 {
		v.lastCol = columns(text[i+1:])
	} else {
		v.lastCol += columns(text)
	}
	if v.width > 0 {
		v.lastCol %= v.width
	}
}

// done clears the live region and ends the text with a newline.
func (v *view) done() {
	v.clear()
	if v.lastCol > 0 || !v.tty {
		fmt.Fprintln(v.w)
	}
}

// columns is the display width of a line, with tabs to the next multiple of 8.
func columns(s string) int {
	col := 0
	for _, part := range strings.SplitAfter(s, "\t") {
		if strings.HasSuffix(part, "\t") {
			col += uniseg.StringWidth(strings.TrimSuffix(part, "\t"))
			col = (col/8 + 1) * 8
		} else {
			col += uniseg.StringWidth(part)
		}
	}
	return col
}

// summary is the closing line of `run` and `generate`.
func summary(tokens, forwards int, elapsed, stepTime time.Duration, reason string) string {
	tpf := 0.0
	if forwards > 0 {
		tpf = float64(tokens) / float64(forwards)
	}
	tps := float64(tokens) / elapsed.Seconds()
	msf := 0.0
	if forwards > 0 {
		msf = float64(stepTime.Microseconds()) / 1000 / float64(forwards)
	}
	return fmt.Sprintf("%d tokens · %d forwards · %.2f tokens/forward · %.1f tokens/s · %.2f ms/forward · finish: %s",
		tokens, forwards, tpf, tps, msf, reason)
}

// rows is how many terminal rows a run of width columns takes.
func (v *view) rows(width int) int {
	if width <= 0 {
		return 1
	}
	return (width-1)/v.width + 1
}
