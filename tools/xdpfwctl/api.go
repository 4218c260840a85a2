package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/xdpfw/xdpfw/proto"
)

// The commands of this file talk to the control plane's API
// (xdpfw-controlplane): the way operators change the fleet.

// Environment variables the API flags default to.
const (
	EnvServer = "XDPFW_SERVER"
	EnvToken  = "XDPFW_TOKEN"
)

const defaultServer = "http://127.0.0.1:8080"

// Exit codes of API commands beyond 0, 1 and 2: scripts branch on them.
const (
	exitConflict     = 3 // a stale --if-match, or a rollout in a state that forbids the request
	exitUnauthorized = 4 // no token, an unknown one, or a role that may not do this
	exitNotFound     = 5 // no such rule set, version, host or rollout
	exitUnavailable  = 6 // the API or its etcd did not answer
)

// apiFlags are the flags of every API command.
type apiFlags struct {
	server  string
	token   string
	cacert  string
	cert    string
	key     string
	timeout time.Duration
	output  string
}

func (f *apiFlags) register(fs *flag.FlagSet, outputs string) {
	server := os.Getenv(EnvServer)
	if server == "" {
		server = defaultServer
	}
	fs.StringVar(&f.server, "server", server, "control-plane API URL (default from $"+EnvServer+")")
	// The default is read after parsing (client): a flag's default is
	// printed in the usage text, and a token must never be.
	fs.StringVar(&f.token, "token", "", "bearer token (default from $"+EnvToken+")")
	fs.StringVar(&f.cacert, "cacert", "", "CA certificate that signed the API's (HTTPS)")
	fs.StringVar(&f.cert, "cert", "", "client certificate, when the API requires one (mTLS)")
	fs.StringVar(&f.key, "key", "", "client key of --cert")
	fs.DurationVar(&f.timeout, "timeout", 10*time.Second, "give up when the API has not answered after this long")
	if outputs != "" {
		fs.StringVar(&f.output, "o", "table", "output: "+outputs)
	}
}

// checkOutput refuses an -o the command does not have.
func (f *apiFlags) checkOutput(allowed ...string) error {
	for _, a := range allowed {
		if f.output == a {
			return nil
		}
	}
	return usageError(fmt.Sprintf("-o %q: want %s", f.output, strings.Join(allowed, ", ")))
}

// apiClient calls the API with the flags' server, token and TLS settings.
type apiClient struct {
	base  *url.URL
	token string
	http  *http.Client
	ctx   context.Context
	// warn receives the API's Warning headers (such as etcd's NOSPACE
	// alarm); nil: discarded.
	warn io.Writer
	// next is the path of the next page the last answer linked to
	// (Link: <...>; rel="next"), or "".
	next string
}

func (f *apiFlags) client(ctx context.Context) (*apiClient, error) {
	base, err := url.Parse(f.server)
	if err != nil || (base.Scheme != "http" && base.Scheme != "https") || base.Host == "" {
		return nil, usageError(fmt.Sprintf("--server %q: want http://HOST:PORT or https://HOST:PORT", f.server))
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.cacert != "" {
		pem, err := os.ReadFile(f.cacert)
		if err != nil {
			return nil, fmt.Errorf("read --cacert: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--cacert %s: no PEM certificate in it", f.cacert)
		}
		tlsCfg.RootCAs = pool
	}
	if f.cert != "" || f.key != "" {
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("load --cert and --key: %w", err)
		}
		tlsCfg.Certificates = []tls.Certificate{pair}
	}
	token := f.token
	if token == "" {
		token = os.Getenv(EnvToken)
	}
	return &apiClient{
		base: base, token: token, ctx: ctx,
		http: &http.Client{Timeout: f.timeout, Transport: &http.Transport{TLSClientConfig: tlsCfg, Proxy: http.ProxyFromEnvironment}},
	}, nil
}

// apiError is an error answer of the API.
type apiError struct {
	status int
	body   proto.APIErrorBody
}

func (e *apiError) Error() string {
	msg := e.body.Message
	if msg == "" {
		msg = http.StatusText(e.status)
	}
	for _, p := range e.body.Problems {
		msg += "\n  " + p.String()
	}
	switch e.status {
	case http.StatusUnauthorized:
		msg += " (give a token with --token or $" + EnvToken + ")"
	case http.StatusForbidden:
		msg += " (ask for a token with a role that may do this)"
	}
	return msg
}

// ExitCode maps the API's answer to the exit codes scripts branch on.
func (e *apiError) ExitCode() int {
	switch e.status {
	case http.StatusConflict:
		return exitConflict
	case http.StatusUnauthorized, http.StatusForbidden:
		return exitUnauthorized
	case http.StatusNotFound:
		return exitNotFound
	case http.StatusServiceUnavailable, http.StatusBadGateway, http.StatusGatewayTimeout:
		return exitUnavailable
	}
	return exitError
}

// unreachable is an API that did not answer.
type unreachable struct{ err error }

func (u unreachable) Error() string { return u.err.Error() }
func (u unreachable) Unwrap() error { return u.err }
func (unreachable) ExitCode() int   { return exitUnavailable }

// call sends a request and decodes the JSON answer into out (nil: none).
// body is JSON-encoded unless it is already []byte.
func (c *apiClient) call(method, path string, body any, header map[string]string, out any) error {
	var rd io.Reader
	contentType := "application/json"
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		data, err := json.Marshal(b)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		rd = bytes.NewReader(data)
	}
	u := c.base.JoinPath(strings.Split(path, "?")[0])
	if _, q, ok := strings.Cut(path, "?"); ok {
		u.RawQuery = q
	}
	req, err := http.NewRequestWithContext(c.ctx, method, u.String(), rd)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, path, err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", contentType)
	}
	req.Header.Set("Accept", "application/json")
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return unreachable{fmt.Errorf("the API at %s did not answer: %w", c.base, err)}
	}
	defer resp.Body.Close()
	c.next = nextLink(resp.Header.Values("Link"))
	if c.warn != nil {
		for _, w := range resp.Header.Values("Warning") {
			fmt.Fprintf(c.warn, "xdpfwctl: warning: %s\n", warningText(w))
		}
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return unreachable{fmt.Errorf("%s %s: read the answer: %w", method, path, err)}
	}
	if resp.StatusCode >= 300 {
		var e proto.APIError
		if json.Unmarshal(data, &e) != nil || e.Error.Code == "" {
			e.Error.Message = fmt.Sprintf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(data)))
		}
		return &apiError{status: resp.StatusCode, body: e.Error}
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s: decode the answer: %w", method, path, err)
	}
	return nil
}

// apiCommand parses an API command's flags and positional arguments and
// connects; it returns the client and the positional arguments.
func apiCommand(name string, args []string, stderr io.Writer, outputs string, extra func(fs *flag.FlagSet)) (*apiClient, *apiFlags, []string, context.CancelFunc, error) {
	fs := newFlagSet(name, stderr)
	var af apiFlags
	af.register(fs, outputs)
	if extra != nil {
		extra(fs)
	}
	rest, err := parseEtcdArgs(fs, args)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	if outputs != "" {
		if err := af.checkOutput(strings.Split(outputs, ", ")...); err != nil {
			return nil, nil, nil, nil, err
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	c, err := af.client(ctx)
	if err != nil {
		cancel()
		return nil, nil, nil, nil, err
	}
	c.warn = stderr
	return c, &af, rest, cancel, nil
}

// exitCoder is an error that says which exit code it deserves.
type exitCoder interface{ ExitCode() int }

// warningText is the text of an RFC 9111 Warning header value
// (`199 xdpfw "text"`), or the value as it is.
func warningText(v string) string {
	if i := strings.IndexByte(v, '"'); i >= 0 {
		if t, err := strconv.Unquote(v[i:]); err == nil {
			return t
		}
	}
	return v
}

// nextLink is the target of a rel="next" Link header value, or "".
func nextLink(values []string) string {
	for _, v := range values {
		for _, link := range strings.Split(v, ",") {
			target, params, ok := strings.Cut(strings.TrimSpace(link), ";")
			if !ok || !strings.Contains(params, `rel="next"`) {
				continue
			}
			target = strings.TrimSpace(target)
			if strings.HasPrefix(target, "<") && strings.HasSuffix(target, ">") {
				return target[1 : len(target)-1]
			}
		}
	}
	return ""
}
