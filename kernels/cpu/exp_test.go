package cpu

import (
	"math"
	"testing"
)

func TestExpNonPos(t *testing.T) {
	for x := -720.0; x <= 0; x += 0.0137 {
		got, want := expNonPos(x), math.Exp(x)
		if math.Abs(got-want) > 1e-10*want+1e-300 && !(want < 1e-300 && got < 1e-300) {
			t.Fatalf("expNonPos(%v) = %v, want %v", x, got, want)
		}
	}
	if v := expNonPos(math.Inf(-1)); v != 0 {
		t.Fatalf("expNonPos(-Inf) = %v", v)
	}
	if v := expNonPos(math.NaN()); !math.IsNaN(v) {
		t.Fatalf("expNonPos(NaN) = %v", v)
	}
}
