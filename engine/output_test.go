package engine

import (
	"slices"
	"testing"

	"github.com/dlmesh/dlmesh/diffusion"
	"github.com/dlmesh/dlmesh/tokenizer"
)

func TestOutText(t *testing.T) {
	tok, err := tokenizer.Load("../models/llada2-tiny-go")
	if err != nil {
		t.Fatal(err)
	}
	enc := tok.Encode
	special, _ := tok.TokenID("<|role_end|>")
	eos := tok.EOSID()
	hello, world := enc("hello"), enc(" world, again")
	rare := enc("😀") // four bytes, more than one token in the tiny vocabulary
	if len(rare) < 2 {
		t.Fatalf("😀 is %d token(s); the UTF-8 case needs it split", len(rare))
	}
	cat := func(parts ...[]int32) []int32 {
		var out []int32
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	type block struct {
		ids  []int32
		want string // the text this block hands out
	}
	for _, tc := range []struct {
		name      string
		gen       int
		keep      bool
		stops     []string
		blocks    []block
		wantText  string
		wantIDs   []int32
		wantStop  bool
		stoppedAt int // the block index where commit reports the stop (-1: none)
	}{
		{name: "special tokens are skipped", gen: 100,
			blocks:   []block{{cat(hello, []int32{special}), "hello"}, {world, " world, again"}},
			wantText: "hello world, again", wantIDs: cat(hello, []int32{special}, world), stoppedAt: -1},
		{name: "special tokens kept on request", gen: 100, keep: true,
			blocks:   []block{{cat(hello, []int32{special}), "hello<|role_end|>"}, {world, " world, again"}},
			wantText: "hello<|role_end|> world, again", wantIDs: cat(hello, []int32{special}, world), stoppedAt: -1},
		{name: "cut at EOS", gen: 100,
			blocks:   []block{{cat(hello, []int32{eos}, world), "hello"}},
			wantText: "hello", wantIDs: hello, stoppedAt: -1},
		{name: "cut at gen_length", gen: len(hello) + 1,
			blocks:   []block{{hello, "hello"}, {world, tok.Decode(world[:1])}},
			wantText: "hello" + tok.Decode(world[:1]), wantIDs: cat(hello, world[:1]), stoppedAt: -1},
		{name: "a UTF-8 sequence split across blocks waits", gen: 100,
			blocks:   []block{{cat(hello, rare[:1]), "hello"}, {rare[1:], "😀"}},
			wantText: "hello😀", wantIDs: cat(hello, rare), stoppedAt: -1},
		{name: "stop string inside a block", gen: 100, stops: []string{"wor"},
			blocks:   []block{{cat(hello, world), "hello "}},
			wantText: "hello ", wantIDs: cat(hello, world[:1]), wantStop: true, stoppedAt: 0},
		{name: "stop string across blocks: the tail waits", gen: 100, stops: []string{"lo wo"},
			blocks:   []block{{hello, "hel"}, {world, ""}},
			wantText: "hel", wantIDs: cat(hello), wantStop: true, stoppedAt: 1},
		{name: "a held tail that turns out not to stop is handed out", gen: 100, stops: []string{"lox"},
			blocks:   []block{{hello, "hel"}, {world, "lo world, again"}},
			wantText: "hello world, again", wantIDs: cat(hello, world), stoppedAt: -1},
		{name: "the earliest of several stop strings", gen: 100, stops: []string{"again", "ld"},
			blocks:   []block{{cat(hello, world), "hello wor"}},
			wantText: "hello wor", wantIDs: cat(hello, world[:len(world)-len(enc(", again"))]), wantStop: true, stoppedAt: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, _ := diffusion.Preset("q")
			p.GenLen, p.StopStrings = tc.gen, tc.stops
			o := newOutText(tok, Request{Prompt: []int32{1, 2}, Params: p, KeepSpecial: tc.keep}, eos)
			at, joined, stoppedAt := 2, "", -1
			for i, b := range tc.blocks {
				got, stopped := o.commit(b.ids, at, i == len(tc.blocks)-1)
				if stopped && stoppedAt < 0 {
					stoppedAt = i
					got += o.finish()
				}
				at += len(b.ids)
				if got != b.want {
					t.Errorf("block %d hands out %q, want %q", i, got, b.want)
				}
				joined += got
				if stopped {
					break
				}
			}
			ids, text := o.result()
			if text != tc.wantText || joined != text {
				t.Errorf("text %q (blocks joined %q), want %q", text, joined, tc.wantText)
			}
			if o.stopped != tc.wantStop || stoppedAt != tc.stoppedAt {
				t.Errorf("stopped %v at block %d, want %v at %d", o.stopped, stoppedAt, tc.wantStop, tc.stoppedAt)
			}
			if !slices.Equal(ids, tc.wantIDs) {
				t.Errorf("ids %v, want %v", ids, tc.wantIDs)
			}
		})
	}
}
