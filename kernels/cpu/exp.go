package cpu

import "math"

// expNonPos is exp(x) for x ≤ 0 (NaN propagates), with a relative error below 1e-10: enough
// for float32 log-sum-exps and several times cheaper than math.Exp. x = n·ln2 + r with
// |r| ≤ ln2/2, exp(r) by its Taylor polynomial of degree 9, scaled by 2^n.
//
//go:norace
func expNonPos(x float64) float64 {
	if !(x > -708) { // underflow to 0 (also -Inf); NaN falls through to math.Exp
		if x != x {
			return x
		}
		return 0
	}
	const (
		log2e = 1.4426950408889634
		ln2Hi = 6.93147180369123816490e-01
		ln2Lo = 1.90821492927058770002e-10
	)
	const round = 1 << 52 * 1.5 // adding and subtracting it rounds to an integer
	n := (x*log2e + round) - round
	r := x - n*ln2Hi - n*ln2Lo
	p := 1 + r*(1+r*(1.0/2+r*(1.0/6+r*(1.0/24+r*(1.0/120+r*(1.0/720+r*(1.0/5040+r*(1.0/40320+r*(1.0/362880)))))))))
	return p * math.Float64frombits(uint64(int64(n)+1023)<<52)
}
