"""Key tables for lowbw.wire.keys: literal data, one entry per line.

A table maps Matrix JSON object keys to small integers. A table is never
edited once released: changing an entry changes the wire format, so a new
table gets a new id (agreed in the handshake, see handshake.py ``caps``).
tests/portable/test_keys.py pins a digest of each table to catch edits.

MSC3079_V1 is the ``cbor_integer_keys_v1`` table of MSC3079 (Appendix A of
proposals/3079-low-bandwidth-csapi.md), exactly: ids 1..104, no id 0.

LOWBW_V1 is a tuple whose index is the id. Ids 0..23 encode as ONE CBOR byte
(major type 0, argument in the initial byte), 24..255 as two, so 0..23 hold
the keys that occur most often in /sync, /messages, /send bodies and event
JSON, and in lowbw's sensor events. The other 82 MSC3079 keys follow from 24
in MSC3079 order, then keys MSC3079 lacks that /sync, push rules, receipts,
relations and errors use a lot. Every MSC3079 key is in LOWBW_V1, so nothing
a table-1 peer can shorten is left long by table 2.

Shared with MicroPython.
"""

# fmt: off
MSC3079_V1 = {
    "event_id": 1,
    "type": 2,
    "content": 3,
    "state_key": 4,
    "room_id": 5,
    "sender": 6,
    "user_id": 7,
    "origin_server_ts": 8,
    "unsigned": 9,
    "prev_content": 10,
    "state": 11,
    "timeline": 12,
    "events": 13,
    "limited": 14,
    "prev_batch": 15,
    "transaction_id": 16,
    "age": 17,
    "redacted_because": 18,
    "next_batch": 19,
    "presence": 20,
    "avatar_url": 21,
    "account_data": 22,
    "rooms": 23,
    "join": 24,
    "membership": 25,
    "displayname": 26,
    "body": 27,
    "msgtype": 28,
    "format": 29,
    "formatted_body": 30,
    "ephemeral": 31,
    "invite_state": 32,
    "leave": 33,
    "third_party_invite": 34,
    "is_direct": 35,
    "hashes": 36,
    "signatures": 37,
    "depth": 38,
    "prev_events": 39,
    "prev_state": 40,
    "auth_events": 41,
    "origin": 42,
    "creator": 43,
    "join_rule": 44,
    "history_visibility": 45,
    "ban": 46,
    "events_default": 47,
    "kick": 48,
    "redact": 49,
    "state_default": 50,
    "users": 51,
    "users_default": 52,
    "reason": 53,
    "visibility": 54,
    "room_alias_name": 55,
    "name": 56,
    "topic": 57,
    "invite": 58,
    "invite_3pid": 59,
    "room_version": 60,
    "creation_content": 61,
    "initial_state": 62,
    "preset": 63,
    "servers": 64,
    "identifier": 65,
    "user": 66,
    "medium": 67,
    "address": 68,
    "password": 69,
    "token": 70,
    "device_id": 71,
    "initial_device_display_name": 72,
    "access_token": 73,
    "home_server": 74,
    "well_known": 75,
    "base_url": 76,
    "device_lists": 77,
    "to_device": 78,
    "peek": 79,
    "last_seen_ip": 80,
    "display_name": 81,
    "typing": 82,
    "last_seen_ts": 83,
    "algorithm": 84,
    "sender_key": 85,
    "session_id": 86,
    "ciphertext": 87,
    "one_time_keys": 88,
    "timeout": 89,
    "recent_rooms": 90,
    "chunk": 91,
    "m.fully_read": 92,
    "device_keys": 93,
    "failures": 94,
    "device_display_name": 95,
    "prev_sender": 96,
    "replaces_state": 97,
    "changed": 98,
    "unstable_features": 99,
    "versions": 100,
    "devices": 101,
    "errcode": 102,
    "error": 103,
    "room_alias": 104,
}

LOWBW_V1 = (
    # 0..23: one CBOR byte. The comment says where the key is hot.
    "type",                # 0: every event
    "content",             # 1: every event
    "sender",              # 2: every event
    "event_id",            # 3: every event; /send answer
    "origin_server_ts",    # 4: every event
    "unsigned",            # 5: every event from a server
    "body",                # 6: m.room.message, sensor events
    "msgtype",             # 7: m.room.message, sensor events
    "state_key",           # 8: state events
    "room_id",             # 9: /messages, /event, /join answers
    "events",              # 10: every /sync section
    "timeline",            # 11: /sync, per room
    "state",               # 12: /sync, per room
    "rooms",               # 13: /sync
    "join",                # 14: /sync
    "next_batch",          # 15: /sync
    "prev_batch",          # 16: /sync, per room
    "limited",             # 17: /sync, per room
    "membership",          # 18: m.room.member
    "age",                 # 19: unsigned of every event
    "account_data",        # 20: /sync, top and per room
    "ephemeral",           # 21: /sync, per room
    "value",               # 22: lowbw sensor events
    "unit",                # 23: lowbw sensor events
    # 24..105: the rest of MSC3079 v1, in its order.
    "user_id",             # 24
    "prev_content",        # 25
    "transaction_id",      # 26
    "redacted_because",    # 27
    "presence",            # 28
    "avatar_url",          # 29
    "displayname",         # 30
    "format",              # 31
    "formatted_body",      # 32
    "invite_state",        # 33
    "leave",               # 34
    "third_party_invite",  # 35
    "is_direct",           # 36
    "hashes",              # 37
    "signatures",          # 38
    "depth",               # 39
    "prev_events",         # 40
    "prev_state",          # 41
    "auth_events",         # 42
    "origin",              # 43
    "creator",             # 44
    "join_rule",           # 45
    "history_visibility",  # 46
    "ban",                 # 47
    "events_default",      # 48
    "kick",                # 49
    "redact",              # 50
    "state_default",       # 51
    "users",               # 52
    "users_default",       # 53
    "reason",              # 54
    "visibility",          # 55
    "room_alias_name",     # 56
    "name",                # 57
    "topic",               # 58
    "invite",              # 59
    "invite_3pid",         # 60
    "room_version",        # 61
    "creation_content",    # 62
    "initial_state",       # 63
    "preset",              # 64
    "servers",             # 65
    "identifier",          # 66
    "user",                # 67
    "medium",              # 68
    "address",             # 69
    "password",            # 70
    "token",               # 71
    "device_id",           # 72
    "initial_device_display_name", # 73
    "access_token",        # 74
    "home_server",         # 75
    "well_known",          # 76
    "base_url",            # 77
    "device_lists",        # 78
    "to_device",           # 79
    "peek",                # 80
    "last_seen_ip",        # 81
    "display_name",        # 82
    "typing",              # 83
    "last_seen_ts",        # 84
    "algorithm",           # 85
    "sender_key",          # 86
    "session_id",          # 87
    "ciphertext",          # 88
    "one_time_keys",       # 89
    "timeout",             # 90
    "recent_rooms",        # 91
    "chunk",               # 92
    "m.fully_read",        # 93
    "device_keys",         # 94
    "failures",            # 95
    "device_display_name", # 96
    "prev_sender",         # 97
    "replaces_state",      # 98
    "changed",             # 99
    "unstable_features",   # 100
    "versions",            # 101
    "devices",             # 102
    "errcode",             # 103
    "error",               # 104
    "room_alias",          # 105
    # 106..122: sync.
    "unread_notifications",  # 106
    "notification_count",  # 107
    "highlight_count",     # 108
    "summary",             # 109
    "m.heroes",            # 110
    "m.joined_member_count",  # 111
    "m.invited_member_count",  # 112
    "device_one_time_keys_count",  # 113
    "signed_curve25519",   # 114
    "device_unused_fallback_key_types",  # 115
    "org.matrix.msc2732.device_unused_fallback_key_types",  # 116
    "left",                # 117
    "knock",               # 118
    "knock_state",         # 119
    "unread_thread_notifications",  # 120
    "start",               # 121
    "end",                 # 122
    # 123..129: relations and redactions.
    "m.relates_to",        # 123
    "rel_type",            # 124
    "m.in_reply_to",       # 125
    "m.new_content",       # 126
    "key",                 # 127
    "redacts",             # 128
    "is_falling_back",     # 129
    # 130..133: receipts.
    "m.read",              # 130
    "m.read.private",      # 131
    "ts",                  # 132
    "thread_id",           # 133
    # 134..149: push rules (most of an initial /sync).
    "global",              # 134
    "override",            # 135
    "underride",           # 136
    "room",                # 137
    "push_rules",          # 138
    "rule_id",             # 139
    "default",             # 140
    "enabled",             # 141
    "actions",             # 142
    "conditions",          # 143
    "kind",                # 144
    "pattern",             # 145
    "is",                  # 146
    "set_tweak",           # 147
    "highlight",           # 148
    "sound",               # 149
    # 150..169: errors, capabilities, login, keys.
    "retry_after_ms",      # 150
    "soft_logout",         # 151
    "capabilities",        # 152
    "m.change_password",   # 153
    "m.room_versions",     # 154
    "available",           # 155
    "m.set_displayname",   # 156
    "m.set_avatar_url",    # 157
    "m.3pid_changes",      # 158
    "expires_in_ms",       # 159
    "refresh_token",       # 160
    "user_ids",            # 161
    "keys",                # 162
    "usage",               # 163
    "one_time_key_counts",  # 164
    "fallback_keys",       # 165
    "master_keys",         # 166
    "self_signing_keys",   # 167
    "user_signing_keys",   # 168
    "m.upload.size",       # 169
    # 170..174: room state.
    "join_authorised_via_users_server",  # 170
    "guest_access",        # 171
    "encryption",          # 172
    "rotation_period_ms",  # 173
    "rotation_period_msgs",  # 174
    # 175..177: lowbw sensor events.
    "values",              # 175
    "measured_at",         # 176
    "sensor",              # 177
)
# fmt: on
