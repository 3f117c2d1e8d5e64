package tokenizer

// StreamDecoder turns ids into text as they arrive. The pieces it returns, joined, equal Decode
// of all the ids: it never splits a UTF-8 sequence, holding back a trailing incomplete one until
// the next ids complete it or Flush gives up on it. A StreamDecoder is not safe for concurrent use.
type StreamDecoder struct {
	t       *Tokenizer
	pending []byte
}

// NewStreamDecoder returns a decoder with nothing pending.
func (t *Tokenizer) NewStreamDecoder() *StreamDecoder {
	return &StreamDecoder{t: t}
}

// Add decodes ids and returns the text they complete.
func (d *StreamDecoder) Add(ids ...int32) string {
	for _, id := range ids {
		d.pending = d.t.appendBytes(d.pending, id)
	}
	k := completePrefix(d.pending)
	if k == 0 {
		return ""
	}
	out := lossyString(d.pending[:k])
	d.pending = append(d.pending[:0], d.pending[k:]...)
	return out
}

// Flush returns whatever is pending (an incomplete sequence becomes U+FFFD) and resets the decoder.
func (d *StreamDecoder) Flush() string {
	out := lossyString(d.pending)
	d.pending = d.pending[:0]
	return out
}
