// Package dashboard is the web view of a mesh: static assets (no data)
// whose script reads the admin API with the admin token. The controller
// serves them at /ui/ (the token is given in the URL fragment, which
// browsers do not send); `statemesh dashboard` serves them locally and
// proxies read-only admin calls with the token from admin.json.
package dashboard

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed assets
var assets embed.FS

// Handler serves the dashboard's files from its root ("/" is the page).
func Handler() http.Handler {
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// Local is the dashboard served beside a proxy of the admin API (the
// page calls /v1/... on its own origin).
func Local(adminAPI http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/", adminAPI)
	mux.Handle("/", Handler())
	return mux
}
