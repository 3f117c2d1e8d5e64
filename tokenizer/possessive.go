package tokenizer

import (
	"fmt"
	"strings"
)

// atomicPattern rewrites the possessive quantifiers of pattern (X?+, X*+, X++, X{n,m}+, as the
// Oniguruma, PCRE and Python regex engines that Hugging Face patterns are written for accept
// them) into atomic groups, which regexp2 has: X?+ is exactly (?>X?), and so on. A possessive
// quantifier never gives back what it matched; an atomic group around the greedy quantifier
// commits to its first match in the same way. Everything else is copied unchanged.
func atomicPattern(pattern string) (string, error) {
	p := &possParser{src: pattern}
	out, err := p.sequence(0)
	if err != nil {
		return "", fmt.Errorf("pattern %q at byte %d: %w", pattern, p.pos, err)
	}
	if p.pos < len(p.src) {
		return "", fmt.Errorf("pattern %q at byte %d: unmatched )", pattern, p.pos)
	}
	return out, nil
}

type possParser struct {
	src string
	pos int
}

// sequence copies alternatives up to the ')' that closes the group at depth (or the end at
// depth 0), wrapping each possessively quantified atom.
func (p *possParser) sequence(depth int) (string, error) {
	var b strings.Builder
	for p.pos < len(p.src) {
		c := p.src[p.pos]
		if c == ')' {
			if depth == 0 {
				return "", fmt.Errorf("unmatched )")
			}
			return b.String(), nil
		}
		if c == '|' {
			b.WriteByte(c)
			p.pos++
			continue
		}
		atom, quantifiable, err := p.atom(depth)
		if err != nil {
			return "", err
		}
		if !quantifiable {
			b.WriteString(atom)
			continue
		}
		q, possessive := p.quantifier()
		if possessive {
			b.WriteString("(?>")
			b.WriteString(atom)
			b.WriteString(q)
			b.WriteByte(')')
		} else {
			b.WriteString(atom)
			b.WriteString(q)
		}
	}
	if depth > 0 {
		return "", fmt.Errorf("missing )")
	}
	return b.String(), nil
}

// atom reads one atom at p.pos: a group, a class, an escape or one character. Inline options
// such as (?i) and comments are not quantifiable.
func (p *possParser) atom(depth int) (string, bool, error) {
	s, start := p.src, p.pos
	switch s[start] {
	case '(':
		prefix, isGroup, err := p.groupPrefix()
		if err != nil {
			return "", false, err
		}
		if !isGroup {
			return prefix, false, nil
		}
		inner, err := p.sequence(depth + 1)
		if err != nil {
			return "", false, err
		}
		if p.pos >= len(s) || s[p.pos] != ')' {
			return "", false, fmt.Errorf("missing )")
		}
		p.pos++
		return prefix + inner + ")", true, nil
	case '[':
		if err := p.skipClass(); err != nil {
			return "", false, err
		}
	case '\\':
		if err := p.skipEscape(); err != nil {
			return "", false, err
		}
	case '^', '$':
		p.pos++
		return s[start:p.pos], false, nil
	default:
		p.pos++
		for p.pos < len(s) && s[p.pos]&0xC0 == 0x80 { // the rest of a UTF-8 sequence
			p.pos++
		}
	}
	return s[start:p.pos], true, nil
}

// groupPrefix reads "(" and what says the kind of group; isGroup is false for (?flags) and (?#…).
func (p *possParser) groupPrefix() (string, bool, error) {
	s, start := p.src, p.pos
	p.pos++
	if p.pos >= len(s) || s[p.pos] != '?' {
		return "(", true, nil
	}
	p.pos++
	if p.pos >= len(s) {
		return "", false, fmt.Errorf("unfinished group")
	}
	switch c := s[p.pos]; {
	case c == ':' || c == '=' || c == '!' || c == '>':
		p.pos++
	case c == '#':
		end := strings.IndexByte(s[p.pos:], ')')
		if end < 0 {
			return "", false, fmt.Errorf("unfinished comment")
		}
		p.pos += end + 1
		return s[start:p.pos], false, nil
	case c == '<' && p.pos+1 < len(s) && (s[p.pos+1] == '=' || s[p.pos+1] == '!'):
		p.pos += 2
	case c == '<' || c == '\'' || c == 'P':
		if c == 'P' {
			p.pos++
		}
		if p.pos >= len(s) {
			return "", false, fmt.Errorf("unfinished group name")
		}
		closer := byte('>')
		if s[p.pos] == '\'' {
			closer = '\''
		}
		end := strings.IndexByte(s[p.pos+1:], closer)
		if end < 0 {
			return "", false, fmt.Errorf("unfinished group name")
		}
		p.pos += end + 2
	case c == '(':
		return "", false, fmt.Errorf("conditional groups are not supported")
	default: // options: (?imsx-imsx) or (?imsx-imsx:…)
		for p.pos < len(s) && strings.IndexByte("imnsxU-", s[p.pos]) >= 0 {
			p.pos++
		}
		if p.pos >= len(s) {
			return "", false, fmt.Errorf("unfinished group")
		}
		switch s[p.pos] {
		case ')':
			p.pos++
			return s[start:p.pos], false, nil
		case ':':
			p.pos++
		default:
			return "", false, fmt.Errorf("unknown group (?%c", s[p.pos])
		}
	}
	return s[start:p.pos], true, nil
}

// skipClass moves past a character class, with escapes, a leading ] and .NET subtractions.
func (p *possParser) skipClass() error {
	s := p.src
	p.pos++ // [
	if p.pos < len(s) && s[p.pos] == '^' {
		p.pos++
	}
	if p.pos < len(s) && s[p.pos] == ']' {
		p.pos++
	}
	for p.pos < len(s) {
		switch s[p.pos] {
		case '\\':
			p.pos += 2
			continue
		case '[':
			if p.pos > 0 && s[p.pos-1] == '-' { // [a-z-[aeiou]]
				if err := p.skipClass(); err != nil {
					return err
				}
				continue
			}
		case ']':
			p.pos++
			return nil
		}
		p.pos++
	}
	return fmt.Errorf("missing ]")
}

// skipEscape moves past an escape: \p{…}, \k<…>, \x{…}, \xHH, \uHHHH, \cX, back references or
// one escaped character.
func (p *possParser) skipEscape() error {
	s := p.src
	p.pos++
	if p.pos >= len(s) {
		return fmt.Errorf("trailing \\")
	}
	c := s[p.pos]
	p.pos++
	upTo := func(closer byte) error {
		end := strings.IndexByte(s[p.pos:], closer)
		if end < 0 {
			return fmt.Errorf("unfinished \\%c", c)
		}
		p.pos += end + 1
		return nil
	}
	switch {
	case (c == 'p' || c == 'P') && p.pos < len(s) && s[p.pos] == '{':
		return upTo('}')
	case c == 'x' && p.pos < len(s) && s[p.pos] == '{':
		return upTo('}')
	case c == 'k' && p.pos < len(s) && (s[p.pos] == '<' || s[p.pos] == '\''):
		closer := byte('>')
		if s[p.pos] == '\'' {
			closer = '\''
		}
		p.pos++
		return upTo(closer)
	case c == 'x':
		p.pos = min(p.pos+2, len(s))
	case c == 'u':
		p.pos = min(p.pos+4, len(s))
	case c == 'c':
		p.pos = min(p.pos+1, len(s))
	case c >= '0' && c <= '9':
		for p.pos < len(s) && s[p.pos] >= '0' && s[p.pos] <= '9' {
			p.pos++
		}
	default:
		for p.pos < len(s) && s[p.pos]&0xC0 == 0x80 {
			p.pos++
		}
	}
	return nil
}

// quantifier reads an optional quantifier after an atom and says whether it is possessive (a
// trailing +, which is then dropped); a lazy one (trailing ?) is kept as it is.
func (p *possParser) quantifier() (string, bool) {
	s, start := p.src, p.pos
	if p.pos >= len(s) {
		return "", false
	}
	switch s[p.pos] {
	case '?', '*', '+':
		p.pos++
	case '{':
		end := p.pos + 1
		digits := 0
		for end < len(s) && s[end] >= '0' && s[end] <= '9' {
			end, digits = end+1, digits+1
		}
		if digits > 0 && end < len(s) && s[end] == ',' {
			end++
			for end < len(s) && s[end] >= '0' && s[end] <= '9' {
				end++
			}
		}
		if digits == 0 || end >= len(s) || s[end] != '}' {
			return "", false // a literal {
		}
		p.pos = end + 1
	default:
		return "", false
	}
	if p.pos < len(s) {
		switch s[p.pos] {
		case '?':
			p.pos++
		case '+':
			p.pos++
			return s[start : p.pos-1], true
		}
	}
	return s[start:p.pos], false
}
