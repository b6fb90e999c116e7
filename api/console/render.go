package console

import (
	"bytes"
	"fmt"
	"html/template"
	"io/fs"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/stripe-ledger/stripe-ledger/eventlog"
)

var funcs = template.FuncMap{
	"time": func(t any) string {
		switch v := t.(type) {
		case time.Time:
			if v.IsZero() {
				return "—"
			}
			return v.UTC().Format(time.RFC3339)
		case *time.Time:
			if v == nil {
				return "—"
			}
			return v.UTC().Format(time.RFC3339)
		}
		return fmt.Sprint(t)
	},
	"money": func(amount int64, currency string) string {
		return fmt.Sprintf("%d.%02d %s", amount/100, abs(amount%100), strings.ToUpper(currency))
	},
	"pos":  func(p eventlog.Position) string { return p.String() },
	"path": url.PathEscape,
	"query": func(kv ...string) string {
		v := url.Values{}
		for i := 0; i+1 < len(kv); i += 2 {
			if kv[i+1] != "" {
				v.Set(kv[i], kv[i+1])
			}
		}
		if len(v) == 0 {
			return ""
		}
		return "?" + v.Encode()
	},
	"has": slices.Contains[[]string],
	"yesno": func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	},
}

func abs(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

// parsePages parses each page template with the layout.
func parsePages() (map[string]*template.Template, error) {
	names, err := fs.Glob(templateFS, "templates/*.html")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, n := range names {
		name := strings.TrimSuffix(strings.TrimPrefix(n, "templates/"), ".html")
		if name == "layout" {
			continue
		}
		t, err := template.New("layout.html").Funcs(funcs).ParseFS(templateFS, "templates/layout.html", n)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render writes page with data (a map: Title, and the page's own keys) and
// what every page shows: the session's CSRF token for the logout form.
func (c *Console) render(ec echo.Context, status int, page string, data map[string]any) error {
	t, ok := c.pages[page]
	if !ok {
		return fmt.Errorf("console: no page %q", page)
	}
	if s, ok := ec.Get(string(sessionKey)).(session); ok {
		data["LoggedIn"], data["SessionCSRF"] = true, c.keys.csrfToken(s)
	}
	data["Prefix"] = Prefix
	var buf bytes.Buffer
	if err := t.Execute(&buf, data); err != nil {
		return fmt.Errorf("render %s: %w", page, err)
	}
	return ec.HTMLBlob(status, buf.Bytes())
}
