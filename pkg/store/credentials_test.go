package store_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/duet-dm/duet/pkg/devicemodel"
	"github.com/duet-dm/duet/pkg/store"
	"github.com/duet-dm/duet/pkg/store/storetest"
)

func newCredKey(t *testing.T) *store.CredentialKey {
	t.Helper()
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		t.Fatal(err)
	}
	k, err := store.ParseCredentialKey(base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestCredentialKeyParse(t *testing.T) {
	for _, bad := range []string{"", "not base64!!", base64.StdEncoding.EncodeToString(make([]byte, 16)), base64.StdEncoding.EncodeToString(make([]byte, 33))} {
		if _, err := store.ParseCredentialKey(bad); err == nil {
			t.Errorf("key %q accepted", bad)
		}
	}
	if _, err := store.ParseCredentialKey(base64.RawURLEncoding.EncodeToString(make([]byte, 32))); err != nil {
		t.Errorf("unpadded URL base64 of 32 bytes refused: %v", err)
	}
}

func TestCredentialSealBindsDeviceAndKey(t *testing.T) {
	k := newCredKey(t)
	a := k.Seal("dev-a", "cr-secret")
	b := k.Seal("dev-a", "cr-secret")
	if bytes.Equal(a, b) {
		t.Fatal("two seals of one value are identical: the nonce is not random")
	}
	if bytes.Contains(a, []byte("cr-secret")) {
		t.Fatal("the sealed value contains the plaintext")
	}
	if got, err := k.Open("dev-a", a); err != nil || got != "cr-secret" {
		t.Fatalf("open = %q, %v", got, err)
	}
	if _, err := k.Open("dev-b", a); err == nil {
		t.Fatal("a value sealed for dev-a opened as dev-b")
	}
	if _, err := newCredKey(t).Open("dev-a", a); err == nil {
		t.Fatal("a value opened under another key")
	}
	a[len(a)-1] ^= 1
	if _, err := k.Open("dev-a", a); err == nil {
		t.Fatal("an altered value opened")
	}
}

func TestDeviceCredentialsRoundTrip(t *testing.T) {
	s, url := storetest.Open(t)
	ctx := context.Background()
	key := newCredKey(t)
	in := store.CredentialsInput{Username: "cpe-a", Password: "acs-pass", ConnectionRequestUsername: "cr-a", ConnectionRequestPassword: "cr-pass-a"}
	got, err := s.PutDeviceCredentials(ctx, "alice", key, "Duet", "dev-a", in)
	if err != nil {
		t.Fatal(err)
	}
	if got.DigestHA1 != store.DigestHA1("cpe-a", "Duet", "acs-pass") || got.Realm != "Duet" || got.UpdatedAt.IsZero() {
		t.Fatalf("put returned %+v", got)
	}
	found, err := s.FindDeviceCredentials(ctx, "dev-a")
	if err != nil || found.Username != "cpe-a" || found.DigestHA1 != got.DigestHA1 || found.ConnectionRequestUsername != "cr-a" || !found.HasConnectionRequestPass {
		t.Fatalf("find = %+v, %v", found, err)
	}
	u, p, ok, err := s.ConnectionRequestCredentials(ctx, key, "dev-a")
	if err != nil || !ok || u != "cr-a" || p != "cr-pass-a" {
		t.Fatalf("connection-request credentials = %q %q %v %v", u, p, ok, err)
	}

	// Nothing in the table is a password in clear.
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var dump string
	if err := conn.QueryRow(ctx, `SELECT row_to_json(c)::text FROM device_credentials c WHERE device_id = 'dev-a'`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"acs-pass", "cr-pass-a", hexOf("cr-pass-a")} {
		if strings.Contains(dump, secret) {
			t.Fatalf("row holds %q in clear: %s", secret, dump)
		}
	}

	// A ciphertext copied to another device's row does not decrypt.
	if _, err := s.PutDeviceCredentials(ctx, "alice", key, "Duet", "dev-b", store.CredentialsInput{Username: "cpe-b", Password: "x", ConnectionRequestUsername: "cr-b", ConnectionRequestPassword: "cr-pass-b"}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE device_credentials SET conn_req_password_sealed =
		(SELECT conn_req_password_sealed FROM device_credentials WHERE device_id = 'dev-a') WHERE device_id = 'dev-b'`); err != nil {
		t.Fatal(err)
	}
	if _, p, _, err := s.ConnectionRequestCredentials(ctx, key, "dev-b"); err == nil {
		t.Fatalf("dev-a's sealed password decrypted as dev-b's: %q", p)
	}

	// Replace, then delete.
	in.ConnectionRequestPassword = "rotated"
	if _, err := s.PutDeviceCredentials(ctx, "alice", key, "Duet", "dev-a", in); err != nil {
		t.Fatal(err)
	}
	if _, p, _, _ := s.ConnectionRequestCredentials(ctx, key, "dev-a"); p != "rotated" {
		t.Fatalf("after replace, password %q", p)
	}
	if err := s.DeleteDeviceCredentials(ctx, "alice", "dev-a"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteDeviceCredentials(ctx, "alice", "dev-a"); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("second delete: %v", err)
	}
	if _, err := s.FindDeviceCredentials(ctx, "dev-a"); devicemodel.ErrorCode(err) != devicemodel.CodeNotFound {
		t.Fatalf("find after delete: %v", err)
	}
	if _, _, ok, err := s.ConnectionRequestCredentials(ctx, key, "dev-a"); ok || err != nil {
		t.Fatalf("connection-request credentials after delete: %v %v", ok, err)
	}
}

func TestCredentialsInputValidate(t *testing.T) {
	ok := store.CredentialsInput{Username: "u", Password: "p", ConnectionRequestUsername: "cu", ConnectionRequestPassword: "cp"}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	long := ok
	long.Password = strings.Repeat("x", 257)
	empty := ok
	empty.ConnectionRequestUsername = ""
	for _, in := range []store.CredentialsInput{long, empty} {
		if err := in.Validate(); devicemodel.ErrorCode(err) != devicemodel.CodeInvalidArgument {
			t.Errorf("%+v: %v", in, err)
		}
	}
	edge := ok
	edge.Password = strings.Repeat("x", 256)
	if err := edge.Validate(); err != nil {
		t.Errorf("256-byte password refused: %v", err)
	}
}

func hexOf(s string) string {
	const digits = "0123456789abcdef"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		b.WriteByte(digits[s[i]>>4])
		b.WriteByte(digits[s[i]&15])
	}
	return b.String()
}
