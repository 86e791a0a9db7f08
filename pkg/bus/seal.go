package bus

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// SealKey seals the secrets that must cross the bus — a CPE's Digest HA1
// on its way to the CWMP adapter, a connection-request password on its way
// to the CPE — so that a client that reads the subject learns nothing
// (issue 15 §4; docs/bus.md, "Secrets on the bus"). The controller and
// every CWMP adapter hold the same key: `duet serve` keeps one in its data
// directory, and split deployments set DUET_BUS_SEAL_KEY.
//
// A sealed value is AES-256-GCM: version byte 1, the key's 4-byte ID, a
// 12-byte nonce, then the ciphertext and tag. The additional data names
// what is sealed and for which device, so a sealed value cannot be replayed
// as another device's or as another kind of secret.
type SealKey struct {
	aead cipher.AEAD
	id   [4]byte
}

// SealKeySize is the key's length in bytes.
const SealKeySize = 32

const sealVersion = 1

// NewSealKey makes a key from 32 bytes.
func NewSealKey(key []byte) (*SealKey, error) {
	if len(key) != SealKeySize {
		return nil, fmt.Errorf("bus: seal key must be %d bytes, got %d", SealKeySize, len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	k := &SealKey{aead: aead}
	sum := sha256.Sum256(append([]byte("duet bus seal key id\x00"), key...))
	copy(k.id[:], sum[:])
	return k, nil
}

// ParseSealKey reads the base64 form (openssl rand -base64 32).
func ParseSealKey(s string) (*SealKey, error) {
	b, err := base64.StdEncoding.DecodeString(strings.TrimSpace(s))
	if err != nil {
		return nil, fmt.Errorf("bus: seal key is not base64: %v", err)
	}
	return NewSealKey(b)
}

// LoadOrCreateSealKey reads the key kept at path (base64), creating it
// with mode 0600 on first use.
func LoadOrCreateSealKey(path string) (*SealKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		var raw [SealKeySize]byte
		if _, err := rand.Read(raw[:]); err != nil {
			return nil, err
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return nil, err
		}
		if err := writeNew(path, []byte(base64.StdEncoding.EncodeToString(raw[:])+"\n")); err != nil {
			return nil, err
		}
		return NewSealKey(raw[:])
	}
	if err != nil {
		return nil, err
	}
	if err := keepPrivate(path); err != nil {
		return nil, err
	}
	k, err := ParseSealKey(string(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ID is the key's short fingerprint (hex), safe to log: it tells two keys
// apart without revealing either.
func (k *SealKey) ID() string { return fmt.Sprintf("%x", k.id) }

// Seal encrypts plain for purpose (what it is and for whom).
func (k *SealKey) Seal(plain []byte, purpose string) []byte {
	out := make([]byte, 0, 1+4+k.aead.NonceSize()+len(plain)+k.aead.Overhead())
	out = append(out, sealVersion)
	out = append(out, k.id[:]...)
	nonce := make([]byte, k.aead.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		panic(err) // crypto/rand never fails on supported platforms
	}
	out = append(out, nonce...)
	return k.aead.Seal(out, nonce, plain, []byte(purpose))
}

// ErrSealKeyMismatch means the value was sealed with another key: the
// controller and the adapter were given different DUET_BUS_SEAL_KEY.
var ErrSealKeyMismatch = errors.New("sealed with another key: give the controller and every CWMP adapter the same DUET_BUS_SEAL_KEY")

// Open decrypts what Seal made for the same purpose.
func (k *SealKey) Open(sealed []byte, purpose string) ([]byte, error) {
	ns := k.aead.NonceSize()
	if len(sealed) < 1+4+ns+k.aead.Overhead() || sealed[0] != sealVersion {
		return nil, errors.New("bus: not a sealed value")
	}
	if string(sealed[1:5]) != string(k.id[:]) {
		return nil, ErrSealKeyMismatch
	}
	nonce := sealed[5 : 5+ns]
	plain, err := k.aead.Open(nil, nonce, sealed[5+ns:], []byte(purpose))
	if err != nil {
		return nil, errors.New("bus: sealed value does not open (tampered, or sealed for another device)")
	}
	return plain, nil
}

// Purposes of sealed values: the additional data binds each to its kind and
// device.
func purposeHA1(deviceID string) string { return "duet.v1.Credentials.digest_ha1\x00" + deviceID }
func purposeParam(deviceID string) string { return "duet.v1.Parameter.value\x00" + deviceID }
func purposeConnReq(deviceID string) string {
	return "duet.v1.ConnectionRequest.password\x00" + deviceID
}

// writeNew creates path with mode 0600, failing if it exists (two processes
// starting at once: one wins, the other reads its file).
func writeNew(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		_ = os.Remove(path)
		return err
	}
	return f.Close()
}

// keepPrivate makes a secret file readable by its owner only, whatever a
// copy or an archive extraction left.
func keepPrivate(path string) error {
	st, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st.Mode().Perm()&0o077 != 0 {
		return os.Chmod(path, 0o600)
	}
	return nil
}
