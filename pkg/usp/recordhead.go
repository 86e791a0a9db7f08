package usp

import (
	"errors"

	"google.golang.org/protobuf/encoding/protowire"
)

// RecordHead is what a broker needs of a Record to bind it to the login
// that sent it: the sender and, for a Connect record, the address the
// agent asks to be reached at.
type RecordHead struct {
	FromID string
	// ReplyTo is MQTTConnectRecord.subscribed_topic or
	// STOMPConnectRecord.subscribed_destination; empty otherwise.
	ReplyTo string
}

var errRecordHead = errors.New("usp: not a USP record")

// ReadRecordHead reads from_id and a Connect record's address from the
// wire form of a Record without decoding the rest (the payload is the
// Controller's business): the embedded brokers call it on every
// PUBLISH/SEND of an agent (TR-369 usp-record-1-4.proto field numbers).
// It allocates only the two strings it returns. A record whose from_id
// appears twice is refused: protobuf keeps the last one, and a broker
// must not read a different sender from the one the Controller reads.
func ReadRecordHead(b []byte) (RecordHead, error) {
	var h RecordHead
	fromSeen := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return h, errRecordHead
		}
		b = b[n:]
		switch {
		case num == 3 && typ == protowire.BytesType: // from_id
			v, n := protowire.ConsumeBytes(b)
			if n < 0 || fromSeen {
				return h, errRecordHead
			}
			fromSeen = true
			h.FromID = string(v)
			b = b[n:]
		case (num == 10 || num == 11) && typ == protowire.BytesType: // mqtt_connect, stomp_connect
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return h, errRecordHead
			}
			reply, err := readConnectAddress(v)
			if err != nil {
				return h, err
			}
			h.ReplyTo = reply
			b = b[n:]
		default:
			n := protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return h, errRecordHead
			}
			b = b[n:]
		}
	}
	if !fromSeen {
		return h, errRecordHead
	}
	return h, nil
}

// readConnectAddress reads field 2 (subscribed_topic, subscribed_destination).
func readConnectAddress(b []byte) (string, error) {
	out := ""
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return "", errRecordHead
		}
		b = b[n:]
		if num == 2 && typ == protowire.BytesType {
			v, n := protowire.ConsumeBytes(b)
			if n < 0 {
				return "", errRecordHead
			}
			out = string(v)
			b = b[n:]
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return "", errRecordHead
		}
		b = b[n:]
	}
	return out, nil
}
