package esdb

import (
	"os"
	"regexp"
	"strconv"
	"testing"

	esdbclient "github.com/EventStore/EventStore-Client-Go/v4/esdb"
)

// TestComposePinsASupportedServer: docker-compose.yml runs a pinned KurrentDB
// release that Open accepts, not a moving tag such as latest.
func TestComposePinsASupportedServer(t *testing.T) {
	t.Parallel()
	compose, err := os.ReadFile("../../docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^\s*image:\s*\S*/kurrentdb:(\S+)`).FindSubmatch(compose)
	if m == nil {
		t.Fatal("docker-compose.yml runs no kurrentdb image")
	}
	v := regexp.MustCompile(`^(\d+)\.(\d+)\.(\d+)(-|$)`).FindStringSubmatch(string(m[1]))
	if v == nil {
		t.Fatalf("the kurrentdb image tag %q is not a release (major.minor.patch)", m[1])
	}
	num := func(s string) int { n, _ := strconv.Atoi(s); return n }
	if version := (esdbclient.ServerVersion{Major: num(v[1]), Minor: num(v[2]), Patch: num(v[3])}); !supportedVersion(version) {
		t.Errorf("the kurrentdb image %s is not a supported server (%s)", m[1], SupportedServers)
	}
}
