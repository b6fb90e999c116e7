package domain

import (
	"encoding"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"math/bits"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode/utf8"
	"unsafe"
)

// A scanner reads a payload into one of decode's structs in one pass, as
// json.Unmarshal would, at a fraction of its cost: rebuilds are bound by
// decoding. It reads only what it is sure json.Unmarshal reads the same way:
// valid JSON no deeper than maxScanDepth, every member of a struct's object
// named exactly as its field's tag or by a key no case folding can match
// to one (lower-case ASCII), no field given twice (json.Unmarshal would
// merge the two), every value of its field's type or null. Anything else
// fails the scan, and unmarshal decodes with encoding/json, which also
// words the errors. The fields are the struct's own, found as
// encoding/json finds them (tags, embedded structs); FuzzScan and
// TestScanLifecycles hold the scanner to json.Unmarshal.
type scanner struct {
	data  []byte
	off   int
	depth int
	bad   bool // the scan failed: off is at the end, and every read is a no-op
}

// maxScanDepth bounds nesting; json.Unmarshal's own bound is deeper, so a
// deeper payload is left to it.
const maxScanDepth = 1000

// unmarshal is json.Unmarshal(data, v) for v, a pointer to a zero struct
// (or map) of the kinds planOf takes: data is scanned, and decoded with encoding/json
// only when the scan fails.
func unmarshal(data []byte, v any) error {
	rv := reflect.ValueOf(v).Elem()
	if scan(data, rv) {
		return nil
	}
	rv.SetZero()
	return json.Unmarshal(data, v)
}

// scan reads data into v, addressable, and reports whether it could.
func scan(data []byte, v reflect.Value) bool {
	s := scanner{data: data}
	s.value(v.Addr().UnsafePointer(), planOf(v.Type()))
	s.next()
	return !s.bad && s.off == len(data)
}

func (s *scanner) fail() {
	s.bad = true
	s.off = len(s.data)
}

// next skips white space and returns the byte after it, 0 at the end.
func (s *scanner) next() byte {
	for ; s.off < len(s.data); s.off++ {
		switch c := s.data[s.off]; c {
		case ' ', '\t', '\n', '\r':
		default:
			return c
		}
	}
	return 0
}

// key reads a member's key and the colon after it, and returns the key as
// it stands between its quotes; plain as str says, and lower that it is
// plain lower-case ASCII (lowerASCII).
func (s *scanner) key() (key []byte, plain, lower bool) {
	if s.next() != '"' {
		s.fail()
		return nil, false, false
	}
	// Nearly every key is lower-case ASCII, read here eight bytes at a
	// time up to the first byte that is not (then byte by byte); any other
	// is read again by str.
	data, start := s.data, s.off+1
	i := start
	for i+8 <= len(data) {
		x := binary.LittleEndian.Uint64(data[i:])
		if m := special(x) | upper(x); m != 0 {
			i += bits.TrailingZeros64(m) / 8
			break
		}
		i += 8
	}
	for i < len(data) && keyByte[data[i]] {
		i++
	}
	if i < len(data) && data[i] == '"' {
		key, plain, lower = data[start:i], true, true
		s.off = i + 1
	} else {
		key, plain = s.str()
		lower = plain && lowerASCII(key)
	}
	if s.off < len(data) && data[s.off] == ':' {
		s.off++
		return key, plain, lower
	}
	if s.next() != ':' {
		s.fail()
		return nil, false, false
	}
	s.off++
	return key, plain, lower
}

// keyByte marks the bytes that stand for themselves in a lower-case ASCII
// key, those that neither special nor upper marks: ASCII from the space
// on but the quote, the backslash and upper-case letters.
var keyByte = func() (class [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		class[c] = c != '"' && c != '\\' && (c < 'A' || c > 'Z')
	}
	return class
}()

// stringByte classes the bytes of a JSON string: 0 for one that stands for
// itself, 1 for the quote and the backslash, 2 for a control character
// (invalid), 3 for a byte outside ASCII.
var stringByte = func() (class [256]byte) {
	for c := range 0x20 {
		class[c] = 2
	}
	class['"'], class['\\'] = 1, 1
	for c := utf8.RuneSelf; c < 256; c++ {
		class[c] = 3
	}
	return class
}()

// str reads a string, at its opening quote, and returns what its quotes
// hold; plain reports that this is its text (no escape, valid UTF-8).
func (s *scanner) str() (inner []byte, plain bool) {
	data := s.data
	start, ascii, escaped := s.off+1, true, false
	for i := start; i < len(data); i++ {
		for i+8 <= len(data) { // eight bytes at a time up to the first that is not plain ASCII
			m := special(binary.LittleEndian.Uint64(data[i:]))
			if m != 0 {
				i += bits.TrailingZeros64(m) / 8
				break
			}
			i += 8
		}
		if i == len(data) {
			break
		}
		switch stringByte[data[i]] {
		case 0:
			continue
		case 3:
			ascii = false
			continue
		case 2:
			s.fail()
			return nil, false
		}
		if data[i] == '"' {
			s.off = i + 1
			inner = data[start:i]
			return inner, !escaped && (ascii || utf8.Valid(inner))
		}
		escaped = true
		if i++; i == len(data) {
			break
		}
		switch data[i] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
		case 'u':
			if i+4 >= len(data) || !isHex(data[i+1]) || !isHex(data[i+2]) || !isHex(data[i+3]) || !isHex(data[i+4]) {
				s.fail()
				return nil, false
			}
			i += 4
		default:
			s.fail()
			return nil, false
		}
	}
	s.fail()
	return nil, false
}

// special marks, in the high bit of each of the eight bytes of x, those that
// stringByte does not class 0: the lowest mark is the first such byte (the
// marks above it may be false).
func special(x uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	quote, backslash := x^(ones*'"'), x^(ones*'\\')
	return ((quote-ones)&^quote | (backslash-ones)&^backslash | (x-ones*0x20)&^x | x) & highs
}

// upper marks, as special does, the upper-case ASCII letters of x: the
// lowest mark is exact when no byte below it is outside ASCII.
func upper(x uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	return (x + ones*(0x80-'A')) &^ (x + ones*(0x80-'Z'-1)) & highs
}

func isHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

// number reads a number and returns it as it stands.
func (s *scanner) number() []byte {
	data, start := s.data, s.off
	i := start
	if i < len(data) && data[i] == '-' {
		i++
	}
	switch {
	case i < len(data) && data[i] == '0':
		i++
	case i < len(data) && '1' <= data[i] && data[i] <= '9':
		i = digits(data, i)
	default:
		s.fail()
		return nil
	}
	if i < len(data) && data[i] == '.' {
		if i = digits(data, i+1); !isDigit(data[i-1]) {
			s.fail()
			return nil
		}
	}
	if i < len(data) && (data[i] == 'e' || data[i] == 'E') {
		if i++; i < len(data) && (data[i] == '+' || data[i] == '-') {
			i++
		}
		if i = digits(data, i); !isDigit(data[i-1]) {
			s.fail()
			return nil
		}
	}
	s.off = i
	return data[start:i]
}

// digits returns the index after the run of digits at i.
func digits(data []byte, i int) int {
	for i < len(data) && isDigit(data[i]) {
		i++
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

func (s *scanner) literal(lit string) {
	if len(s.data)-s.off >= len(lit) && string(s.data[s.off:s.off+len(lit)]) == lit {
		s.off += len(lit)
		return
	}
	s.fail()
}

// skip reads a value of any kind.
func (s *scanner) skip() {
	switch c := s.next(); {
	case c == '"':
		s.str()
	case c == '{':
		for more := s.enter('}'); more; more = s.more('}') {
			s.key()
			s.skip()
		}
	case c == '[':
		for more := s.enter(']'); more; more = s.more(']') {
			s.skip()
		}
	case c == 't':
		s.literal("true")
	case c == 'f':
		s.literal("false")
	case c == 'n':
		s.literal("null")
	case c == '-' || isDigit(c):
		s.number()
	default:
		s.fail()
	}
}

// enter reads the opening brace or bracket of an object or array, and
// reports whether a member or element follows (false when end, '}' or ']',
// closes it at once, or the scan failed). The members of an object are read
// as
//
//	for more := s.enter('}'); more; more = s.more('}') { … }
func (s *scanner) enter(end byte) bool {
	s.off++
	if s.depth++; s.depth > maxScanDepth {
		s.fail()
		return false
	}
	if s.next() == end {
		s.off++
		s.depth--
		return false
	}
	return !s.bad
}

// more reads what follows a member or element that enter or more said
// follows: it reports whether a comma announces another, or reads the end.
func (s *scanner) more(end byte) bool {
	switch s.next() {
	case ',':
		s.off++
		return !s.bad
	case end:
		s.off++
		s.depth--
		return false
	}
	s.fail()
	return false
}

// raw reads a value of any kind and returns it as it stands.
func (s *scanner) raw() []byte {
	s.next()
	start := s.off
	s.skip()
	return s.data[start:s.off]
}

// eachMember calls each with the key and value, as they stand, of every
// member of data, and reports whether data is a JSON object whose keys have
// no escapes and are valid UTF-8 (each may have been called for the
// members before what makes it not).
func eachMember(data []byte, each func(key, value []byte)) bool {
	s := scanner{data: data}
	if s.next() != '{' {
		return false
	}
	for more := s.enter('}'); more; more = s.more('}') {
		key, plain, _ := s.key()
		if !plain {
			s.fail()
			break
		}
		if value := s.raw(); !s.bad {
			each(key, value)
		}
	}
	s.next()
	return !s.bad && s.off == len(data)
}

// internedNames are the JSON names of the string fields whose texts repeat
// from event to event (an object's kind, a status, a currency, a line's
// type, a price's lookup key): the scanner reads them through intern.
var internedNames = map[string]bool{
	"object": true, "status": true, "currency": true, "collection_method": true, "type": true, "lookup_key": true,
}

// internTexts holds texts intern has made, by keySlot: a slot keeps the
// last text that hashed to it.
var internTexts [1 << 10]atomic.Pointer[string]

// intern is string(text), without an allocation when the same text was
// interned lately.
func intern(text []byte) string {
	if len(text) == 0 || len(text) > 32 {
		return string(text)
	}
	slot := &internTexts[keySlot(text, 64-10)]
	if s := slot.Load(); s != nil && *s == string(text) {
		return *s
	}
	s := string(text)
	slot.Store(&s)
	return s
}

// A typePlan is how the scanner reads a value of one type.
type typePlan struct {
	kind   planKind
	typ    reflect.Type          // the type read
	intern bool                  // a string field of internedNames: its text is read through intern
	fields map[string]*fieldPlan // a struct's, by JSON name
	slots  []*fieldPlan          // the same fields by keySlot, for field
	shift  uint                  // keySlot's
	elem   *typePlan             // a pointer's, slice's or map's
}

// planKind is what a typePlan reads.
type planKind uint8

const (
	stringPlan planKind = iota + 1
	boolPlan
	int64Plan
	structPlan
	pointerPlan // to a struct
	slicePlan   // of structs
	mapPlan     // by string
	// unmarshalerPlan is a json.Unmarshaler, given the value as it stands.
	unmarshalerPlan
	// expandablePlan is an expandable: a string or null read as a string
	// field is (what its UnmarshalJSON makes of them), anything else given
	// to its UnmarshalJSON.
	expandablePlan
	// rawPlan is a json.RawMessage: the value as it stands, in place in the
	// data (its UnmarshalJSON copies it).
	rawPlan
)

// fieldPlan is one field of a struct: its JSON name, its offset in the
// struct (through embedded structs) and its number in the struct, below
// 64; next is the next field of its slot.
type fieldPlan struct {
	name   string
	offset uintptr
	number int
	plan   *typePlan
	next   *fieldPlan
}

// field is the struct's field named key, nil when it has none. Most keys
// of a payload name no field, and most of those find their slot empty: a
// hash of the key's length and three of its bytes (keySlot) costs less
// than a map's look-up.
func (p *typePlan) field(key []byte) *fieldPlan {
	if len(key) == 0 || len(p.slots) == 0 {
		return nil
	}
	for f := p.slots[keySlot(key, p.shift)]; f != nil; f = f.next {
		if f.name == string(key) {
			return f
		}
	}
	return nil
}

// keySlot hashes key, not empty, from its length and its first, middle and
// last bytes into 64-shift bits.
func keySlot[K string | []byte](key K, shift uint) uint64 {
	h := uint64(len(key)) | uint64(key[0])<<8 | uint64(key[len(key)/2])<<16 | uint64(key[len(key)-1])<<24
	return h * 0x9e3779b97f4a7c15 >> shift
}

// addSlots makes p.slots, four or more slots a field.
func (p *typePlan) addSlots() {
	if len(p.fields) == 0 {
		return
	}
	size := bits.Len(uint(len(p.fields))) + 2
	p.shift, p.slots = uint(64-size), make([]*fieldPlan, 1<<size)
	for _, name := range slices.Sorted(maps.Keys(p.fields)) {
		f := p.fields[name]
		slot := keySlot(name, p.shift)
		f.next, p.slots[slot] = p.slots[slot], f
	}
}

var (
	plans           sync.Map // reflect.Type → *typePlan
	unmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textType        = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// planOf is the plan of type t, made once. It panics for a type the
// scanner does not read (it reads what decode's structs hold).
func planOf(t reflect.Type) *typePlan {
	if p, ok := plans.Load(t); ok {
		return p.(*typePlan)
	}
	p := newPlan(t)
	plans.Store(t, p)
	return p
}

func newPlan(t reflect.Type) *typePlan {
	switch {
	case t == reflect.TypeFor[expandable]():
		return &typePlan{kind: expandablePlan, typ: t}
	case t == reflect.TypeFor[json.RawMessage]():
		return &typePlan{kind: rawPlan, typ: t}
	case reflect.PointerTo(t).Implements(unmarshalerType):
		return &typePlan{kind: unmarshalerPlan, typ: t}
	case reflect.PointerTo(t).Implements(textType):
	case t.Kind() == reflect.String:
		return &typePlan{kind: stringPlan, typ: t}
	case t.Kind() == reflect.Bool:
		return &typePlan{kind: boolPlan, typ: t}
	case t.Kind() == reflect.Int64:
		return &typePlan{kind: int64Plan, typ: t}
	case t.Kind() == reflect.Pointer && t.Elem().Kind() == reflect.Struct, t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		// value reads the element as an object of fields, never through
		// its own UnmarshalJSON
		if elem := newPlan(t.Elem()); elem.kind == structPlan {
			kind := pointerPlan
			if t.Kind() == reflect.Slice {
				kind = slicePlan
			}
			return &typePlan{kind: kind, typ: t, elem: elem}
		}
	case t.Kind() == reflect.Map && t.Key() == reflect.TypeFor[string]():
		return &typePlan{kind: mapPlan, typ: t, elem: newPlan(t.Elem())} // each value read by value, as its plan says
	case t.Kind() == reflect.Struct:
		p := &typePlan{kind: structPlan, typ: t, fields: map[string]*fieldPlan{}}
		addFields(p, t)
		if len(p.fields) > 64 {
			panic(fmt.Sprintf("domain: the scanner reads structs of at most 64 fields, not %v", t))
		}
		p.addSlots()
		return p
	}
	panic(fmt.Sprintf("domain: the scanner does not read %v", t))
}

// addFields adds to p the fields of struct t as encoding/json finds them:
// a field's name is its tag's, else its own; an embedded struct without a
// tag lends its fields, which fields of the same name nearer the top
// hide; two of one name at one depth are beyond the scanner.
func addFields(p *typePlan, t reflect.Type) {
	type embedded struct {
		t      reflect.Type
		offset uintptr
	}
	level := []embedded{{t: t}}
	for len(level) > 0 {
		var next []embedded
		names := map[string]bool{} // at this depth
		for _, e := range level {
			for i := range e.t.NumField() {
				f := e.t.Field(i)
				tag := f.Tag.Get("json")
				name, opts, _ := strings.Cut(tag, ",")
				offset := e.offset + f.Offset
				switch {
				case f.Anonymous && tag == "" && f.Type.Kind() == reflect.Struct:
					next = append(next, embedded{f.Type, offset})
					continue
				case f.Anonymous || opts != "":
					panic(fmt.Sprintf("domain: the scanner does not read field %s of %v", f.Name, e.t))
				case !f.IsExported() || tag == "-":
					continue
				case name == "":
					name = f.Name
				}
				if names[name] {
					panic(fmt.Sprintf("domain: the scanner does not read %v, whose field %s is not alone at its depth", t, name))
				}
				names[name] = true
				if p.fields[name] == nil {
					plan := newPlan(f.Type)
					plan.intern = plan.kind == stringPlan && internedNames[name]
					p.fields[name] = &fieldPlan{name: name, offset: offset, number: len(p.fields), plan: plan}
				}
			}
		}
		level = next
	}
}

// object reads an object into the struct at v; null leaves it as it is,
// as json.Unmarshal does.
func (s *scanner) object(v unsafe.Pointer, p *typePlan) {
	switch s.next() {
	case 'n':
		s.literal("null")
		return
	case '{':
	default:
		s.fail()
		return
	}
	var seen uint64
	for more := s.enter('}'); more; more = s.more('}') {
		key, _, lower := s.key()
		f := p.field(key)
		switch {
		case s.bad:
		case f == nil && !lower: // json.Unmarshal's case folding may match it to a field
			s.fail()
		case f == nil:
			s.skip()
		case seen&(1<<f.number) != 0:
			s.fail()
		default:
			seen |= 1 << f.number
			s.value(unsafe.Add(v, f.offset), f.plan)
		}
	}
}

// lowerASCII reports whether key, as it stands in the JSON, holds no
// escape, no upper-case letter and no byte outside ASCII.
func lowerASCII(key []byte) bool {
	for _, c := range key {
		if c == '\\' || 'A' <= c && c <= 'Z' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// value reads a value into the one at v, of p's type, which is zero, as p
// says: null leaves it zero; an array (even empty) is a new slice; a value
// of another type than v's fails the scan (json.Unmarshal would report
// it). A json.Unmarshaler is given the value as it stands, null included,
// as json.Unmarshal gives it. The values are written through v by the
// types planOf found at v (reflect's setters cost a decode a tenth of its
// time).
func (s *scanner) value(v unsafe.Pointer, p *typePlan) {
	c := s.next()
	switch {
	case p.kind == unmarshalerPlan:
		if raw := s.raw(); !s.bad && reflect.NewAt(p.typ, v).Interface().(json.Unmarshaler).UnmarshalJSON(raw) != nil {
			s.fail()
		}
	case p.kind == rawPlan:
		if raw := s.raw(); !s.bad {
			*(*json.RawMessage)(v) = raw[:len(raw):len(raw)]
		}
	case p.kind == structPlan:
		s.object(v, p)
	case c == 'n': // v is zero: the scan reads a field once (and an expandable's null is "")
		s.literal("null")
	case p.kind == expandablePlan && c != '"':
		if raw := s.raw(); !s.bad {
			*(*expandable)(v) = expandable(expandableID(raw))
		}
	case (p.kind == stringPlan || p.kind == expandablePlan) && c == '"':
		start := s.off
		inner, plain := s.str()
		text := (*string)(v)
		switch {
		case s.bad:
		case plain && p.intern:
			*text = intern(inner)
		case plain:
			*text = string(inner)
		default: // escapes and invalid UTF-8, as encoding/json reads them
			if json.Unmarshal(s.data[start:s.off], text) != nil {
				s.fail()
			}
		}
	case p.kind == int64Plan && (c == '-' || isDigit(c)):
		if number := s.number(); !s.bad {
			n, ok := parseInt64(number)
			if !ok {
				s.fail()
			}
			*(*int64)(v) = n
		}
	case p.kind == boolPlan && c == 't':
		s.literal("true")
		*(*bool)(v) = true
	case p.kind == boolPlan && c == 'f':
		s.literal("false")
	case p.kind == pointerPlan && c == '{':
		elem := reflect.New(p.elem.typ).UnsafePointer()
		s.object(elem, p.elem)
		*(*unsafe.Pointer)(v) = elem
	case p.kind == mapPlan && c == '{':
		// a key given twice is the last one's, as in json.Unmarshal
		m := reflect.MakeMap(p.typ)
		for more := s.enter('}'); more; more = s.more('}') {
			key, plain, _ := s.key()
			if !plain { // escapes and invalid UTF-8 are left to encoding/json
				s.fail()
				break
			}
			elem := reflect.New(p.elem.typ)
			s.value(elem.UnsafePointer(), p.elem)
			m.SetMapIndex(reflect.ValueOf(string(key)), elem.Elem())
		}
		reflect.NewAt(p.typ, v).Elem().Set(m)
	case p.kind == slicePlan && c == '[':
		elems := reflect.MakeSlice(p.typ, 0, 0)
		for more := s.enter(']'); more; more = s.more(']') {
			elems = reflect.Append(elems, reflect.Zero(p.elem.typ))
			s.object(elems.Index(elems.Len()-1).Addr().UnsafePointer(), p.elem)
		}
		reflect.NewAt(p.typ, v).Elem().Set(elems)
	default:
		s.fail()
	}
}

// parseInt64 is strconv.ParseInt of number, a JSON number, as
// json.Unmarshal reads an int64 (a fraction, an exponent or too many
// digits fail), without ParseInt's cost for 18 digits or fewer.
func parseInt64(number []byte) (int64, bool) {
	digits := number
	if len(digits) > 0 && digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 18 {
		n, err := strconv.ParseInt(string(number), 10, 64)
		return n, err == nil
	}
	var n int64
	for _, c := range digits {
		if !isDigit(c) {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	if len(digits) < len(number) {
		n = -n
	}
	return n, true
}
