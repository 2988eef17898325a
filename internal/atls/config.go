package atls

import (
	"crypto/tls"
	"crypto/x509"
)

// ExporterValue is Exporter for a connection state held by value (as
// tls.Conn.ConnectionState returns it).
func ExporterValue(cs tls.ConnectionState) ([]byte, error) { return Exporter(&cs) }

// ServerConfig returns a hardened (TLS 1.3 only, no session tickets)
// server configuration presenting cert. With clientCAs, client
// certificates are verified against it: required when requireClient is
// set, else only when presented (enrollment comes before a node has one).
func ServerConfig(cert tls.Certificate, clientCAs *x509.CertPool, requireClient bool) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{cert}}
	if clientCAs != nil {
		c.ClientCAs = clientCAs
		c.ClientAuth = tls.VerifyClientCertIfGiven
		if requireClient {
			c.ClientAuth = tls.RequireAndVerifyClientCert
		}
	}
	return Harden(c)
}

// ClientConfig returns a hardened (TLS 1.3 only, no session cache) client
// configuration that trusts roots for serverName and presents cert when it
// is not nil.
func ClientConfig(roots *x509.CertPool, serverName string, cert *tls.Certificate) *tls.Config {
	c := &tls.Config{RootCAs: roots, ServerName: serverName}
	if cert != nil {
		c.Certificates = []tls.Certificate{*cert}
	}
	return Harden(c)
}
