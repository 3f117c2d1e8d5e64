package engine

import (
	"strings"

	"github.com/dlmesh/dlmesh/tokenizer"
)

// outText builds a request's output from its finished blocks, as Hugging Face returns it: the
// tokens of the first gen_length generated positions up to the first EOS, their text without
// special tokens (unless KeepSpecial), cut before the first stop string. It hands the text out
// append-only, block by block, so that a stream of the pieces is the final text: a tail that
// could still grow into a stop string, or an unfinished UTF-8 sequence, waits for the next block.
type outText struct {
	tok   *tokenizer.Tokenizer // nil: ids only
	dec   *tokenizer.StreamDecoder
	keep  bool // keep special tokens in the text
	stops []string
	eos   int32
	limit int // absolute position after the last returned one: prompt + gen_length

	ids     []int32 // committed ids (gen_length and EOS cuts applied)
	text    string  // their text, cut at a stop string once stopped
	sent    int     // bytes of text handed out
	closed  bool    // EOS or a stop string: nothing more is committed
	stopped bool    // a stop string matched
}

func newOutText(tok *tokenizer.Tokenizer, req Request, eos int32) outText {
	o := outText{tok: tok, keep: req.KeepSpecial, stops: req.Params.StopStrings, eos: eos,
		limit: len(req.Prompt) + req.Params.GenLen}
	if tok != nil {
		o.dec = tok.NewStreamDecoder()
	}
	return o
}

// commit adds a finished block's generated tokens gen, the first at absolute position at, and
// returns the text it commits and whether a stop string matched. last is true for the
// request's last block: everything pending is handed out.
func (o *outText) commit(gen []int32, at int, last bool) (string, bool) {
	if !o.closed {
		for i, t := range gen {
			if at+i >= o.limit {
				break
			}
			if t == o.eos {
				o.closed = true
				break
			}
			o.ids = append(o.ids, t)
			if o.dec != nil && (o.keep || !o.tok.IsSpecial(t)) {
				o.text += o.dec.Add(t)
			}
		}
	}
	if last || o.closed {
		o.flush()
	}
	o.findStop()
	if last || o.closed {
		return o.take(len(o.text)), o.stopped
	}
	return o.take(len(o.text) - o.holdBack()), o.stopped
}

// finish hands out whatever is still pending (the request ended early, at a stop string).
func (o *outText) finish() string {
	o.flush()
	o.findStop()
	return o.take(len(o.text))
}

func (o *outText) flush() {
	if o.dec != nil && !o.stopped {
		o.text += o.dec.Flush()
	}
}

func (o *outText) take(end int) string {
	if end <= o.sent {
		return ""
	}
	s := o.text[o.sent:end]
	o.sent = end
	return s
}

// findStop cuts the text before the earliest stop string, once.
func (o *outText) findStop() {
	if o.stopped || len(o.stops) == 0 {
		return
	}
	cut := -1
	for _, s := range o.stops {
		if i := strings.Index(o.text, s); i >= 0 && (cut < 0 || i < cut) {
			cut = i
		}
	}
	if cut < 0 {
		return
	}
	o.text, o.stopped, o.closed = o.text[:cut], true, true
	if o.sent > cut { // cannot happen: a held-back tail covers every partial match
		o.sent = cut
	}
}

// holdBack is the length of the longest tail of the unsent text that is a proper prefix of a
// stop string: it may still become one.
func (o *outText) holdBack() int {
	rest := o.text[o.sent:]
	hold := 0
	for _, s := range o.stops {
		for k := min(len(s)-1, len(rest)); k > hold; k-- {
			if strings.HasSuffix(rest, s[:k]) {
				hold = k
				break
			}
		}
	}
	return hold
}

// result returns the output ids and text. After a stop string the ids end with the token in
// which it begins: the shortest prefix whose text covers the cut text.
func (o *outText) result() ([]int32, string) {
	ids := o.ids
	if o.stopped && o.tok != nil {
		d, n := o.tok.NewStreamDecoder(), 0
		for k, t := range ids {
			if n >= len(o.text) {
				ids = ids[:k]
				break
			}
			if o.keep || !o.tok.IsSpecial(t) {
				n += len(d.Add(t))
			}
		}
	}
	if ids == nil {
		ids = []int32{}
	}
	return ids, o.text
}
