-- Wireshark dissector for lowbw datagrams (Matrix over 100 bit/s radios).
--
-- Layout: docs/PROTOCOL.md, sections "Frames", "Transport frames" and
-- "Handshake datagrams"; code: lowbw/wire/frames.py, lowbw/wire/handshake.py.
--
--   kind byte   meaning
--   00cccccc    transport, short form: c = counter bits 0..5
--   01cccccc    transport, long form: 3 more counter bytes (bits 6..29) follow
--               the session id (uplink) or the kind byte (downlink)
--   0x81 IK 1 (device -> proxy)   0x82 IK 2 (proxy -> device)
--   0x83 XX 1 (device -> proxy)   0x84 XX 2 (proxy -> device)
--   0x85 XX 3 (device -> proxy, session id in clear)
--   0x86 cookie reply (proxy -> device)   0x87 cookie + IK 1 / XX 1 (device -> proxy)
--
-- Uplink transport frames (device -> proxy) carry the 2-byte session id;
-- downlink frames do not. The bytes do not say which way a frame goes, so the
-- UDP port does: a datagram TO the proxy port (preference "port", default
-- 5683) is uplink, one FROM it downlink. radio_sim --pcap captures put the
-- proxy side on 10.0.1.1:5683 whatever the real port was.
--
-- Nothing is decrypted: ciphertext is shown as "encrypted" bytes plus its
-- 16-byte Poly1305 tag. Load with `tshark -X lua_script:contrib/wireshark/lowbw.lua`
-- or copy this file into Wireshark's personal Lua plugins folder.
--
-- Written against the Wireshark 4.0 Lua API (Lua 5.2); plain arithmetic only,
-- so it also runs on Lua 5.4 builds.

local DEFAULT_PORT = 5683
local TAG_LEN = 16
local DH_LEN = 32
local SID_LEN = 2
local COOKIE_LEN = 16
local XX1_MIN_LEN = 100

local lowbw = Proto("lowbw", "lowbw radio datagram")

local kind_names = {
    [0x81] = "IK 1 (Noise IK message 1, device -> proxy)",
    [0x82] = "IK 2 (Noise IK message 2, proxy -> device)",
    [0x83] = "XX 1 (Noise XX message 1, device -> proxy)",
    [0x84] = "XX 2 (Noise XX message 2, proxy -> device)",
    [0x85] = "XX 3 (Noise XX message 3, device -> proxy)",
    [0x86] = "Cookie reply (proxy -> device)",
    [0x87] = "Cookied initiation (cookie + IK 1 / XX 1, device -> proxy)",
}
local short_names = {
    [0x81] = "IK1", [0x82] = "IK2", [0x83] = "XX1", [0x84] = "XX2", [0x85] = "XX3",
    [0x86] = "COOKIE-REPLY", [0x87] = "COOKIED",
}
-- Which way each handshake kind travels: true = uplink.
local kind_uplink = {
    [0x81] = true, [0x82] = false, [0x83] = true, [0x84] = false, [0x85] = true,
    [0x86] = false, [0x87] = true,
}
local form_names = {
    [0] = "transport, short counter form",
    [1] = "transport, long counter form",
    [2] = "handshake",
    [3] = "unknown",
}

local f = {
    len = ProtoField.uint16("lowbw.len", "Datagram length", base.DEC),
    kind = ProtoField.uint8("lowbw.kind", "Kind", base.HEX),
    form = ProtoField.uint8("lowbw.kind.form", "Form", base.DEC, form_names, 0xC0),
    ctr_low = ProtoField.uint8("lowbw.kind.ctr_low", "Counter bits 0..5", base.DEC, nil, 0x3F),
    type = ProtoField.string("lowbw.type", "Type"),
    direction = ProtoField.string("lowbw.direction", "Direction"),
    sid = ProtoField.uint16("lowbw.sid", "Session id", base.HEX_DEC),
    ctr_high = ProtoField.uint24("lowbw.ctr_high", "Counter bits 6..29", base.DEC),
    counter = ProtoField.uint32("lowbw.counter", "Counter", base.DEC),
    ephemeral = ProtoField.bytes("lowbw.ephemeral", "Ephemeral public key (e)"),
    static = ProtoField.bytes("lowbw.static", "Encrypted static public key (s)"),
    static_ct = ProtoField.bytes("lowbw.static.encrypted", "Static key, encrypted"),
    static_tag = ProtoField.bytes("lowbw.static.tag", "Static key tag (Poly1305)"),
    payload = ProtoField.bytes("lowbw.encrypted", "Encrypted payload"),
    payload_len = ProtoField.uint16("lowbw.encrypted_len", "Encrypted payload length", base.DEC),
    tag = ProtoField.bytes("lowbw.tag", "Payload tag (Poly1305)"),
    plain = ProtoField.bytes("lowbw.plaintext", "Plaintext payload (XX 1, unauthenticated)"),
    caps = ProtoField.uint8("lowbw.caps", "Caps", base.HEX),
    caps_table = ProtoField.uint8("lowbw.caps.table", "Key table", base.DEC,
        { [1] = "MSC3079 v1", [2] = "lowbw v1" }, 0x0F),
    caps_dict = ProtoField.bool("lowbw.caps.dict_v1", "CAP_DICT_V1 (preset body dictionary v1)", 8, nil, 0x10),
    caps_epoch = ProtoField.bool("lowbw.caps.epoch", "CAP_EPOCH (counter epoch follows)", 8, nil, 0x20),
    caps_floor = ProtoField.bool("lowbw.caps.floor", "CAP_FLOOR", 8, nil, 0x40),
    caps_reserved = ProtoField.bool("lowbw.caps.reserved", "Reserved", 8, nil, 0x80),
    padding = ProtoField.bytes("lowbw.padding", "Padding"),
    padding_len = ProtoField.uint16("lowbw.padding_len", "Padding length", base.DEC),
    cookie = ProtoField.bytes("lowbw.cookie", "Cookie"),
    inner = ProtoField.bytes("lowbw.inner", "Initiation behind the cookie"),
    trailing = ProtoField.bytes("lowbw.trailing", "Trailing bytes"),
    truncated = ProtoField.bytes("lowbw.truncated", "Truncated field"),
}
lowbw.fields = f

local ex = {
    malformed = ProtoExpert.new("lowbw.malformed", "Malformed lowbw datagram",
        expert.group.MALFORMED, expert.severity.ERROR),
    unknown = ProtoExpert.new("lowbw.unknown_kind", "Unknown kind byte (a lowbw receiver drops it silently)",
        expert.group.UNDECODED, expert.severity.WARN),
    direction = ProtoExpert.new("lowbw.wrong_direction", "This kind travels the other way",
        expert.group.SEQUENCE, expert.severity.WARN),
    counter = ProtoExpert.new("lowbw.counter_inferred",
        "Counter bits above 5 inferred from earlier frames in the capture",
        expert.group.SEQUENCE, expert.severity.CHAT),
}
lowbw.experts = { ex.malformed, ex.unknown, ex.direction, ex.counter }

lowbw.prefs.port = Pref.uint("Proxy UDP port", DEFAULT_PORT,
    "UDP port of the lowbw proxy: datagrams to it are uplink (device -> proxy), from it downlink")

local udp_table = DissectorTable.get("udp.port")
local registered_port = DEFAULT_PORT

-- Counter reconstruction state (first pass): per flow the highest counter
-- seen, rebuilt the way lowbw's receiver does from the low 6 bits.
local tops = {}
local up_sid_of = {}   -- device address -> its last uplink session id
local counters = {}    -- frame number -> {counter, inferred}

function lowbw.init()
    tops = {}
    up_sid_of = {}
    counters = {}
end

local function malformed(tree, pinfo, what)
    tree:add_proto_expert_info(ex.malformed, what)
    pinfo.cols.info:append(" [Malformed: " .. what .. "]")
end

-- Adds `len` bytes at `offset` as `field`, or what is left and a malformed
-- note. Returns the new offset and whether the field was complete.
local function take(tvb, tree, pinfo, field, offset, len, what)
    local left = tvb:len() - offset
    if left >= len then
        tree:add(field, tvb(offset, len))
        return offset + len, true
    end
    if left > 0 then
        tree:add(f.truncated, tvb(offset, left)):append_text(" (" .. what .. ")")
    end
    malformed(tree, pinfo, string.format("%s: %d of %d bytes", what, left, len))
    return tvb:len(), false
end

-- Encrypted payload + tag: everything from offset to the end.
local function add_aead(tvb, tree, pinfo, offset, what)
    local left = tvb:len() - offset
    if left < TAG_LEN then
        if left > 0 then
            tree:add(f.truncated, tvb(offset, left)):append_text(" (tag)")
        end
        malformed(tree, pinfo, string.format("%s shorter than its 16-byte tag (%d bytes)", what, left))
        return -1
    end
    local ct_len = left - TAG_LEN
    local item
    if ct_len > 0 then
        item = tree:add(f.payload, tvb(offset, ct_len))
        item:append_text(string.format(" (%d bytes, ChaCha20)", ct_len))
    else
        item = tree:add(f.payload, tvb(offset, 0))
        item:append_text(" (empty)")
    end
    tree:add(f.payload_len, ct_len):set_generated()
    tree:add(f.tag, tvb(offset + ct_len, TAG_LEN))
    return ct_len
end

local function add_static(tvb, tree, pinfo, offset)
    local left = tvb:len() - offset
    if left < DH_LEN + TAG_LEN then
        if left > 0 then
            tree:add(f.truncated, tvb(offset, left)):append_text(" (encrypted static key)")
        end
        malformed(tree, pinfo, string.format("encrypted static key: %d of 48 bytes", math.max(left, 0)))
        return tvb:len(), false
    end
    local st = tree:add(f.static, tvb(offset, DH_LEN + TAG_LEN))
    st:set_text("Encrypted static public key (s): 32 bytes + 16-byte tag")
    st:add(f.static_ct, tvb(offset, DH_LEN))
    st:add(f.static_tag, tvb(offset + DH_LEN, TAG_LEN))
    return offset + DH_LEN + TAG_LEN, true
end

local function add_caps(tvb, tree, offset)
    local c = tree:add(f.caps, tvb(offset, 1))
    c:add(f.caps_table, tvb(offset, 1))
    c:add(f.caps_dict, tvb(offset, 1))
    c:add(f.caps_epoch, tvb(offset, 1))
    c:add(f.caps_floor, tvb(offset, 1))
    c:add(f.caps_reserved, tvb(offset, 1))
end

local function addr_key(addr, port)
    return tostring(addr) .. ":" .. tostring(port)
end

-- Rebuild a short-form counter as lowbw's receiver does (nearest to top + 1
-- within -32..+31); a long-form counter is exact. Computed once per frame.
local function rebuild_counter(pinfo, key, low, full)
    local n = pinfo.number
    local known = counters[n]
    if known ~= nil then
        return known[1], known[2]
    end
    local top = tops[key] or -1
    local c, inferred
    if full ~= nil then
        c, inferred = full, false
    else
        local expected = top + 1
        local base = expected - 32
        if base < 0 then
            base = 0
        end
        c = (base - base % 64) + low
        if c < base then
            c = c + 64
        end
        inferred = c >= 64
    end
    if c > top then
        tops[key] = c
    end
    counters[n] = { c, inferred }
    return c, inferred
end

-- Forget a flow's counters when a new session starts on it.
local function reset_flow(pinfo, key)
    if not pinfo.visited then
        tops[key] = nil
    end
end

local dissect_at

local function dissect_transport(tvb, pinfo, tree, offset, b0, uplink, proxy_key, device_key)
    local long = b0 >= 0x40
    local low = b0 % 64
    local pos = offset + 1
    pinfo.cols.info:set(string.format("%s %s", uplink and "Uplink" or "Downlink",
        long and "transport (long)" or "transport"))
    local sid
    if uplink then
        if tvb:len() - pos < SID_LEN then
            take(tvb, tree, pinfo, f.sid, pos, SID_LEN, "session id")
            return
        end
        sid = tvb(pos, SID_LEN):uint()
        tree:add(f.sid, tvb(pos, SID_LEN))
        pos = pos + SID_LEN
    end
    local full
    if long then
        if tvb:len() - pos < 3 then
            take(tvb, tree, pinfo, f.ctr_high, pos, 3, "long counter")
            return
        end
        local hi = tvb(pos, 3):uint()
        tree:add(f.ctr_high, tvb(pos, 3))
        full = hi * 64 + low
        pos = pos + 3
    end
    local key
    if uplink then
        key = "up|" .. proxy_key .. "|" .. tostring(sid)
        if not pinfo.visited then
            up_sid_of[device_key] = sid
        end
    else
        key = "down|" .. proxy_key .. "|" .. device_key
    end
    local c, inferred = rebuild_counter(pinfo, key, low, full)
    local ci = tree:add(f.counter, c)
    ci:set_generated()
    if full == nil then
        ci:append_text(" (bits 6..29 inferred from the capture)")
        if inferred then
            ci:add_proto_expert_info(ex.counter)
        end
    end
    local info = string.format("%s %s ctr=%d", uplink and "Uplink" or "Downlink",
        long and "transport (long)" or "transport", c)
    if sid ~= nil then
        info = info .. string.format(" sid=0x%04x", sid)
    end
    local ct_len = tvb:len() - pos - TAG_LEN
    if ct_len >= 0 then
        info = info .. string.format(", %d B encrypted", ct_len)
    end
    pinfo.cols.info:set(info)
    add_aead(tvb, tree, pinfo, pos, "transport frame")
    tree:append_text(string.format(", %s, counter %d", long and "transport long" or "transport short", c))
end

local function dissect_handshake(tvb, pinfo, tree, offset, b0, uplink, proxy_key, device_key, nested)
    local pos = offset + 1
    if uplink ~= kind_uplink[b0] then
        tree:add_proto_expert_info(ex.direction,
            string.format("%s travels %s, seen %s", short_names[b0],
                kind_uplink[b0] and "uplink" or "downlink", uplink and "uplink" or "downlink"))
    end
    if not nested then
        pinfo.cols.info:set(kind_names[b0])
    end
    tree:append_text(", " .. short_names[b0])
    -- A handshake answer starts a new downlink session; an initiation a new uplink one.
    if b0 == 0x82 or b0 == 0x84 then
        reset_flow(pinfo, "down|" .. proxy_key .. "|" .. device_key)
    elseif b0 == 0x81 or b0 == 0x83 then
        local old = up_sid_of[device_key]
        if old ~= nil then
            reset_flow(pinfo, "up|" .. proxy_key .. "|" .. tostring(old))
        end
    end

    if b0 == 0x81 then -- IK 1: e | enc(s) | enc(payload)
        local ok
        pos, ok = take(tvb, tree, pinfo, f.ephemeral, pos, DH_LEN, "ephemeral key")
        if not ok then return end
        pos, ok = add_static(tvb, tree, pinfo, pos)
        if not ok then return end
        add_aead(tvb, tree, pinfo, pos, "IK 1 payload")
    elseif b0 == 0x82 then -- IK 2: e | enc(sid caps [floor] CoAP)
        local ok
        pos, ok = take(tvb, tree, pinfo, f.ephemeral, pos, DH_LEN, "ephemeral key")
        if not ok then return end
        add_aead(tvb, tree, pinfo, pos, "IK 2 payload")
    elseif b0 == 0x83 then -- XX 1: e | caps | zero padding
        local ok
        pos, ok = take(tvb, tree, pinfo, f.ephemeral, pos, DH_LEN, "ephemeral key")
        if not ok then return end
        if tvb:len() - pos < 1 then
            malformed(tree, pinfo, "XX 1 without its caps byte")
            return
        end
        local pl = tree:add(f.plain, tvb(pos, tvb:len() - pos))
        add_caps(tvb, pl, pos)
        pos = pos + 1
        local pad = tvb:len() - pos
        if pad > 0 then
            pl:add(f.padding, tvb(pos, pad))
        end
        pl:add(f.padding_len, pad):set_generated()
        if tvb:len() - offset < XX1_MIN_LEN then
            malformed(tree, pinfo, string.format("XX 1 of %d bytes, padded to at least %d",
                tvb:len() - offset, XX1_MIN_LEN))
        end
    elseif b0 == 0x84 then -- XX 2: e | enc(s) | enc(sid caps)
        local ok
        pos, ok = take(tvb, tree, pinfo, f.ephemeral, pos, DH_LEN, "ephemeral key")
        if not ok then return end
        pos, ok = add_static(tvb, tree, pinfo, pos)
        if not ok then return end
        add_aead(tvb, tree, pinfo, pos, "XX 2 payload")
    elseif b0 == 0x85 then -- XX 3: sid | enc(s) | enc([epoch] CoAP)
        if tvb:len() - pos < SID_LEN then
            take(tvb, tree, pinfo, f.sid, pos, SID_LEN, "session id")
            return
        end
        local sid = tvb(pos, SID_LEN):uint()
        tree:add(f.sid, tvb(pos, SID_LEN))
        pos = pos + SID_LEN
        if not nested then
            pinfo.cols.info:append(string.format(" sid=0x%04x", sid))
        end
        reset_flow(pinfo, "up|" .. proxy_key .. "|" .. tostring(sid))
        reset_flow(pinfo, "down|" .. proxy_key .. "|" .. device_key)
        if not pinfo.visited then
            up_sid_of[device_key] = sid
        end
        local ok
        pos, ok = add_static(tvb, tree, pinfo, pos)
        if not ok then return end
        add_aead(tvb, tree, pinfo, pos, "XX 3 payload")
    elseif b0 == 0x86 then -- cookie reply: cookie(16)
        local ok
        pos, ok = take(tvb, tree, pinfo, f.cookie, pos, COOKIE_LEN, "cookie")
        if not ok then return end
        if tvb:len() > pos then
            tree:add(f.trailing, tvb(pos, tvb:len() - pos))
            malformed(tree, pinfo, string.format("%d bytes after the cookie", tvb:len() - pos))
        end
    elseif b0 == 0x87 then -- cookie(16) | IK 1 or XX 1, kind byte included
        local ok
        pos, ok = take(tvb, tree, pinfo, f.cookie, pos, COOKIE_LEN, "cookie")
        if not ok then return end
        if tvb:len() - pos < 1 then
            malformed(tree, pinfo, "no initiation behind the cookie")
            return
        end
        local inner_kind = tvb(pos, 1):uint()
        local sub = tree:add(f.inner, tvb(pos, tvb:len() - pos))
        sub:set_text(string.format("Initiation behind the cookie (%d bytes)", tvb:len() - pos))
        if nested or (inner_kind ~= 0x81 and inner_kind ~= 0x83) then
            malformed(sub, pinfo, string.format("a cookie may only carry IK 1 or XX 1, not kind 0x%02x", inner_kind))
            return
        end
        dissect_at(tvb, pinfo, sub, pos, uplink, proxy_key, device_key, true)
        pinfo.cols.info:append(" carrying " .. short_names[inner_kind])
    end
end

-- Dissects the datagram starting at `offset` (0, or after a cookie).
dissect_at = function(tvb, pinfo, tree, offset, uplink, proxy_key, device_key, nested)
    local b0 = tvb(offset, 1):uint()
    local k = tree:add(f.kind, tvb(offset, 1))
    k:add(f.form, tvb(offset, 1))
    local form = math.floor(b0 / 64)
    if form == 0 or form == 1 then
        k:add(f.ctr_low, tvb(offset, 1))
        k:append_text(form == 0 and " (transport, short counter form)" or " (transport, long counter form)")
        tree:add(f.type, form == 0 and "transport-short" or "transport-long"):set_generated()
        dissect_transport(tvb, pinfo, tree, offset, b0, uplink, proxy_key, device_key)
    elseif kind_names[b0] ~= nil then
        k:append_text(", " .. kind_names[b0])
        tree:add(f.type, short_names[b0]):set_generated()
        dissect_handshake(tvb, pinfo, tree, offset, b0, uplink, proxy_key, device_key, nested)
    else
        tree:add(f.type, "unknown"):set_generated()
        k:append_text(" (unknown)")
        k:add_proto_expert_info(ex.unknown)
        pinfo.cols.info:set(string.format("Unknown kind 0x%02x (%d bytes)", b0, tvb:len() - offset))
        tree:append_text(string.format(", unknown kind 0x%02x", b0))
    end
end

function lowbw.dissector(tvb, pinfo, tree)
    pinfo.cols.protocol:set("lowbw")
    local len = tvb:len()
    local subtree = tree:add(lowbw, tvb(), "lowbw")
    subtree:add(f.len, len):set_generated()
    local port = lowbw.prefs.port
    local uplink
    if pinfo.dst_port == port then
        uplink = true
    elseif pinfo.src_port == port then
        uplink = false
    else
        uplink = true -- Decode As on another port: assume towards the proxy
    end
    subtree:add(f.direction, uplink and "uplink" or "downlink"):set_generated()
    local proxy_key, device_key
    if uplink then
        proxy_key, device_key = addr_key(pinfo.dst, pinfo.dst_port), addr_key(pinfo.src, pinfo.src_port)
    else
        proxy_key, device_key = addr_key(pinfo.src, pinfo.src_port), addr_key(pinfo.dst, pinfo.dst_port)
    end
    if len == 0 then
        pinfo.cols.info:set("Empty datagram")
        malformed(subtree, pinfo, "empty datagram")
        return 0
    end
    dissect_at(tvb, pinfo, subtree, 0, uplink, proxy_key, device_key, false)
    pinfo.cols.info:append(string.format(" len=%d", len))
    return len
end

-- On the proxy port this replaces CoAP (lowbw datagrams are not plain CoAP).
udp_table:add(registered_port, lowbw)

function lowbw.prefs_changed()
    local port = lowbw.prefs.port
    if port ~= registered_port then
        if registered_port ~= 0 then
            udp_table:remove(registered_port, lowbw)
        end
        if port ~= 0 then
            udp_table:add(port, lowbw)
        end
        registered_port = port
    end
end
