package projections

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// copyFrom writes rows into the table into (t's columns) with a binary COPY
// whose rows copyStream encodes itself, as pgx's CopyFrom would encode
// them: pgx's encoding (a plan looked up and a pointer dereferenced by
// reflection for every value) and the statement it describes first cost
// a fill's flushes more of its Go CPU than the fold of their rows.
func copyFrom[T any](ctx context.Context, tx pgx.Tx, into pgx.Identifier, t table[T], rows []T) error {
	cols := make([]string, len(t.columns))
	for i, c := range t.columns {
		cols[i] = pgx.Identifier{c.name}.Sanitize()
	}
	sql := "COPY " + into.Sanitize() + " (" + strings.Join(cols, ", ") + ") FROM STDIN (FORMAT binary)"
	_, err := tx.Conn().PgConn().CopyFrom(ctx, &copyStream[T]{t: t, rows: rows, pending: copyHeader}, sql)
	return err
}

// copyStream is the binary COPY data of rows, encoded row by row as it
// is read.
type copyStream[T any] struct {
	t       table[T]
	rows    []T
	next    int    // the row to encode next; len(rows)+1 once the trailer is encoded
	row     []byte // the last row encoded
	pending []byte // what is encoded and not read yet
}

// copyHeader starts binary COPY data: its signature, no flags, no extension.
var copyHeader = []byte("PGCOPY\n\xff\r\n\x00\x00\x00\x00\x00\x00\x00\x00\x00")

// copyTrailer ends binary COPY data: a row of -1 fields.
var copyTrailer = []byte{0xff, 0xff}

func (c *copyStream[T]) Read(p []byte) (int, error) {
	n := 0
	for {
		k := copy(p[n:], c.pending)
		n, c.pending = n+k, c.pending[k:]
		if n == len(p) {
			return n, nil
		}
		switch {
		case c.next < len(c.rows):
			var err error
			if c.row, err = appendCopyRow(c.row[:0], c.t, &c.rows[c.next]); err != nil {
				return n, err
			}
			c.pending = c.row
		case c.next == len(c.rows):
			c.pending = copyTrailer
		case n == 0:
			return 0, io.EOF
		default:
			return n, nil
		}
		c.next++
	}
}

// pgEpoch is PostgreSQL's zero time, from which timestamptz counts microseconds.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC).Unix()

// appendCopyRow appends row, a row of t, as binary COPY encodes it: its
// number of fields, then each field's length (-1 for NULL) and value in
// its column type's binary form. A nil pointer is NULL; JSON is jsonOf's.
func appendCopyRow[T any](buf []byte, t table[T], row *T) ([]byte, error) {
	fields := t.fields(row)
	buf = binary.BigEndian.AppendUint16(buf, uint16(len(fields)))
	for i, field := range fields {
		switch v := field.(type) {
		case *string:
			buf = binary.BigEndian.AppendUint32(buf, uint32(len(*v)))
			buf = append(buf, *v...)
		case *int64:
			buf = binary.BigEndian.AppendUint32(buf, 8)
			buf = binary.BigEndian.AppendUint64(buf, uint64(*v))
		case *bool:
			b := byte(0)
			if *v {
				b = 1
			}
			buf = append(buf, 0, 0, 0, 1, b)
		case *time.Time:
			buf = appendTimestamptz(buf, *v)
		case **time.Time:
			if *v == nil {
				buf = binary.BigEndian.AppendUint32(buf, 0xffffffff)
				continue
			}
			buf = appendTimestamptz(buf, **v)
		default:
			if c := t.columns[i]; c.sqlType() != "jsonb" {
				return nil, fmt.Errorf("copy %s.%s: no binary encoding of %T", t.name, c.name, field)
			}
			text := jsonOf(field)
			if text == nil {
				buf = binary.BigEndian.AppendUint32(buf, 0xffffffff)
				continue
			}
			buf = binary.BigEndian.AppendUint32(buf, uint32(1+len(text)))
			buf = append(buf, 1) // jsonb's binary form: version 1, then the text
			buf = append(buf, text...)
		}
	}
	return buf, nil
}

// appendTimestamptz appends t as a binary timestamptz: microseconds since
// pgEpoch, as pgx encodes it.
func appendTimestamptz(buf []byte, t time.Time) []byte {
	buf = binary.BigEndian.AppendUint32(buf, 8)
	return binary.BigEndian.AppendUint64(buf, uint64((t.Unix()-pgEpoch)*1_000_000+int64(t.Nanosecond())/1000))
}
