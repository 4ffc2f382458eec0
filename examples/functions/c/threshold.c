/*
 * threshold.c: the `threshold` example function in freestanding C, built
 * against the Verge WebAssembly ABI, version 1 (docs/functions.md) with no
 * libc at all: `clang --target=wasm32 -nostdlib` (see build.sh).
 *
 * It does what the Rust `threshold` does: when the payload's number field
 * (default "temperature") is greater than `above` (default 30), it returns
 * one JSON alert on `topic` (default "alerts/{device}"), else nothing:
 *
 *   {"device":"d1","field":"temperature","value":31.5,"above":30,
 *    "topic":"devices/d1/telemetry","time_ms":1764390000000}
 *
 * Simplifications, since there is no JSON parser here:
 * - The payload is not parsed: the function scans it for the first
 *   `"<field>"` followed by `:` and a number. A nested or quoted occurrence
 *   counts too, a dotted path is not understood, and a payload that is not
 *   JSON is not detected (it just lacks the field).
 * - The config is scanned the same way for "field" and "topic" (strings
 *   without escapes) and "above" (a number); other keys are ignored.
 * - Numbers are copied into the alert as written in the payload and config
 *   (`"above":30`, where the Rust version writes `30.0`).
 *
 * Memory: after the static data and the stack (both laid out by wasm-ld)
 * comes, from __heap_base, the config (read once), then the input buffer,
 * then the output. The memory grows as they need.
 */

typedef unsigned char u8;
typedef unsigned int u32;
typedef int i32;
typedef long long i64;
typedef unsigned long long u64;
typedef unsigned long usize;

#define IMPORT(name) __attribute__((import_module("verge"), import_name(#name)))
#define EXPORT(name) __attribute__((export_name(#name)))

IMPORT(log) void host_log(i32 level, const u8 *ptr, u32 len);
IMPORT(config) i32 host_config(u8 *ptr, u32 cap);

/* ---- the helpers libc would give ---------------------------------------- */

/* The compiler may emit calls to these for copies and zeroing. */
void *memcpy(void *dst, const void *src, usize n) {
    u8 *d = dst;
    const u8 *s = src;
    while (n--) *d++ = *s++;
    return dst;
}

void *memset(void *dst, int c, usize n) {
    u8 *d = dst;
    while (n--) *d++ = (u8)c;
    return dst;
}

static u32 str_len(const char *s) {
    u32 n = 0;
    while (s[n]) n++;
    return n;
}

static int bytes_eq(const u8 *a, const u8 *b, u32 n) {
    for (u32 i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static int is_space(u8 c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
static int is_digit(u8 c) { return c >= '0' && c <= '9'; }

/* ---- memory ------------------------------------------------------------- */

extern u8 __heap_base;
#define PAGE 65536u

/* Make sure [0, end) is inside the memory; 0 when it cannot grow. */
static int ensure(usize end) {
    usize have = __builtin_wasm_memory_size(0) * PAGE;
    if (end <= have) return 1;
    usize pages = (end - have + PAGE - 1) / PAGE;
    return __builtin_wasm_memory_grow(0, pages) != (usize)-1;
}

static usize align8(usize n) { return (n + 7) & ~(usize)7; }

/* ---- config ------------------------------------------------------------- */

/* A byte string that points into the config, the input or a literal. */
typedef struct {
    const u8 *ptr;
    u32 len;
} str;

static str lit(const char *s) {
    str r = {(const u8 *)s, str_len(s)};
    return r;
}

static int config_state; /* 0 not read yet, 1 good, 2 rejected */
static str cfg_field, cfg_above_text, cfg_topic;
static double cfg_above;
static u8 *input_base; /* the input buffer starts after the config */

/* Find `"key"` followed by optional spaces and `:`; the value's start, or 0.
 * The inner loop only looks for the next quote: it is the one that runs
 * over every byte of the payload. */
static const u8 *find_key(const u8 *p, u32 n, const u8 *key, u32 key_len) {
    const u8 *end = p + n;
    for (;;) {
        while (p < end && *p != '"') p++;
        if ((usize)(end - p) < key_len + 3) return 0; /* "key": needs this much */
        p++;
        if (p[key_len] != '"' || !bytes_eq(p, key, key_len)) continue;
        const u8 *v = p + key_len + 1;
        while (v < end && is_space(*v)) v++;
        if (v == end || *v != ':') continue;
        v++;
        while (v < end && is_space(*v)) v++;
        return v;
    }
}

/* A JSON number at p (at most n bytes): its length and value, 0 if none. */
static u32 parse_number(const u8 *p, u32 n, double *out) {
    u32 i = 0;
    int neg = 0, exp = 0, exp_neg = 0, frac = 0;
    double v = 0;
    if (i < n && p[i] == '-') neg = 1, i++;
    if (i >= n || !is_digit(p[i])) return 0;
    while (i < n && is_digit(p[i])) v = v * 10 + (p[i++] - '0');
    if (i < n && p[i] == '.') {
        i++;
        if (i >= n || !is_digit(p[i])) return 0;
        while (i < n && is_digit(p[i])) v = v * 10 + (p[i++] - '0'), frac++;
    }
    if (i < n && (p[i] == 'e' || p[i] == 'E')) {
        i++;
        if (i < n && (p[i] == '+' || p[i] == '-')) exp_neg = p[i++] == '-';
        if (i >= n || !is_digit(p[i])) return 0;
        while (i < n && is_digit(p[i]))
            if (exp < 10000) exp = exp * 10 + (p[i++] - '0');
            else i++;
    }
    exp = (exp_neg ? -exp : exp) - frac;
    for (; exp > 0 && exp < 400; exp--) v *= 10;
    for (; exp < 0 && exp > -400; exp++) v /= 10;
    *out = neg ? -v : v;
    return i;
}

/* A JSON string without escapes at p: its contents, or len 0 and 0 ptr. */
static str parse_plain_string(const u8 *p, u32 n) {
    str r = {0, 0};
    if (n == 0 || p[0] != '"') return r;
    for (u32 i = 1; i < n; i++) {
        if (p[i] == '\\') return r;
        if (p[i] == '"') {
            r.ptr = p + 1;
            r.len = i - 1;
            return r;
        }
    }
    return r;
}

static void log_line(i32 level, const char *s) { host_log(level, (const u8 *)s, str_len(s)); }

/* Read and scan the config once (and place the input buffer after it);
 * 0 when the config is rejected or there is no memory for it. */
static int load_config(void) {
    if (config_state) return config_state == 1;
    u8 *base = &__heap_base;
    i32 len = host_config(base, 0);
    if (len < 0) len = 0;
    if (!ensure((usize)base + (u32)len)) return 0;
    host_config(base, (u32)len);
    input_base = base + align8((u32)len);
    config_state = 2;

    cfg_field = lit("temperature");
    cfg_above_text = lit("30");
    cfg_above = 30;
    cfg_topic = lit("alerts/{device}");
    const u8 *end = base + len, *v;
    if ((v = find_key(base, (u32)len, (const u8 *)"field", 5))) {
        cfg_field = parse_plain_string(v, (u32)(end - v));
        if (!cfg_field.ptr || !cfg_field.len) {
            log_line(0, "config key field: not a plain string");
            return 0;
        }
    }
    if ((v = find_key(base, (u32)len, (const u8 *)"above", 5))) {
        u32 n = parse_number(v, (u32)(end - v), &cfg_above);
        if (!n) {
            log_line(0, "config key above: not a number");
            return 0;
        }
        cfg_above_text.ptr = v;
        cfg_above_text.len = n;
    }
    if ((v = find_key(base, (u32)len, (const u8 *)"topic", 5))) {
        cfg_topic = parse_plain_string(v, (u32)(end - v));
        if (!cfg_topic.ptr) {
            log_line(0, "config key topic: not a plain string");
            return 0;
        }
    }
    config_state = 1;
    return 1;
}

/* ---- output ------------------------------------------------------------- */

/* The output, written at the end of the used memory and grown as needed. */
static u8 *out_base;
static u32 out_len;
static int out_failed;

static void put(const u8 *p, u32 n) {
    if (out_failed || !ensure((usize)out_base + out_len + n)) {
        out_failed = 1;
        return;
    }
    memcpy(out_base + out_len, p, n);
    out_len += n;
}

static void put_byte(u8 b) { put(&b, 1); }
static void put_s(str s) { put(s.ptr, s.len); }
static void put_c(const char *s) { put((const u8 *)s, str_len(s)); }

static void put_u32(u32 v) {
    u8 b[4] = {(u8)v, (u8)(v >> 8), (u8)(v >> 16), (u8)(v >> 24)};
    put(b, 4);
}

/* A length prefix to fill in later: its offset. */
static u32 put_len_slot(void) {
    u32 at = out_len;
    put_u32(0);
    return at;
}

static void fill_len_slot(u32 at) {
    if (out_failed) return;
    u32 v = out_len - at - 4;
    u8 *p = out_base + at;
    p[0] = (u8)v, p[1] = (u8)(v >> 8), p[2] = (u8)(v >> 16), p[3] = (u8)(v >> 24);
}

static void put_i64(i64 v) {
    u8 buf[20];
    u32 i = sizeof buf;
    u64 u = v < 0 ? (u64)0 - (u64)v : (u64)v;
    do buf[--i] = (u8)('0' + u % 10), u /= 10;
    while (u);
    if (v < 0) buf[--i] = '-';
    put(buf + i, sizeof buf - i);
}

/* A JSON string: quotes, `"` and `\` escaped, control bytes as \u00XX. */
static void put_json_string(str s) {
    static const char hex[] = "0123456789abcdef";
    put_byte('"');
    for (u32 i = 0; i < s.len; i++) {
        u8 c = s.ptr[i];
        if (c == '"' || c == '\\') {
            put_byte('\\');
            put_byte(c);
        } else if (c < 0x20) {
            u8 esc[6] = {'\\', 'u', '0', '0', (u8)hex[c >> 4], (u8)hex[c & 15]};
            put(esc, 6);
        } else {
            put_byte(c);
        }
    }
    put_byte('"');
}

/* What to return when the memory cannot grow for the output. */
static const u8 out_of_memory[] = {1, 13, 0, 0, 0, 'o', 'u', 't', ' ', 'o', 'f',
                                   ' ', 'm', 'e', 'm', 'o', 'r', 'y'};

static u64 finish(void) {
    if (out_failed) return ((u64)(usize)out_of_memory << 32) | sizeof out_of_memory;
    return ((u64)(usize)out_base << 32) | out_len;
}

static u64 error_output(const char *msg) {
    out_len = 0;
    put_byte(1);
    put_u32(str_len(msg));
    put_c(msg);
    return finish();
}

/* ---- input -------------------------------------------------------------- */

typedef struct {
    const u8 *p;
    u32 left;
    int bad;
} reader;

static u32 read_u32(reader *r) {
    if (r->bad || r->left < 4) return r->bad = 1, 0;
    u32 v = r->p[0] | r->p[1] << 8 | r->p[2] << 16 | (u32)r->p[3] << 24;
    r->p += 4, r->left -= 4;
    return v;
}

static str read_str(reader *r) {
    str s = {0, 0};
    u32 n = read_u32(r);
    if (r->bad || n > r->left) return r->bad = 1, s;
    s.ptr = r->p, s.len = n;
    r->p += n, r->left -= n;
    return s;
}

/* ---- exports ------------------------------------------------------------ */

EXPORT(verge_abi_version) i32 verge_abi_version(void) { return 1; }

EXPORT(verge_init) i32 verge_init(void) { return load_config() ? 0 : 1; }

static u32 input_cap;

EXPORT(verge_alloc) u8 *verge_alloc(i32 len) {
    load_config(); /* places input_base, even when the config is rejected */
    if (len < 0 || !input_base || !ensure((usize)input_base + (u32)len)) return 0;
    input_cap = (u32)len;
    return input_base;
}

EXPORT(verge_handle) u64 verge_handle(const u8 *ptr, i32 len) {
    out_base = input_base ? input_base + align8(input_cap) : &__heap_base;
    out_len = 0;
    out_failed = 0;
    if (!input_base) return error_output("verge_handle before verge_alloc");
    if (!load_config()) return error_output("bad config (see the log)");
    if (ptr != input_base || len < 0 || (u32)len > input_cap)
        return error_output("bad input: not the buffer verge_alloc returned");

    reader r = {ptr, (u32)len, 0};
    str topic = read_str(&r);
    str payload = read_str(&r);
    read_str(&r); /* content type */
    u32 n_props = read_u32(&r);
    for (u32 i = 0; i < n_props && !r.bad; i++) read_str(&r), read_str(&r);
    i64 time_ms = 0;
    u8 qos = 0;
    if (!r.bad && r.left == 9) {
        u64 t = 0;
        for (int i = 7; i >= 0; i--) t = t << 8 | r.p[i];
        time_ms = (i64)t;
        qos = r.p[8];
    } else {
        r.bad = 1;
    }
    if (r.bad || qos > 2) return error_output("bad input");

    const u8 *v = find_key(payload.ptr, payload.len, cfg_field.ptr, cfg_field.len);
    if (!v) {
        put_byte(1);
        u32 slot = put_len_slot();
        put_s(cfg_field);
        put_c(" missing");
        fill_len_slot(slot);
        return finish();
    }
    double value;
    str value_text = {v, parse_number(v, (u32)(payload.ptr + payload.len - v), &value)};
    if (!value_text.len) {
        put_byte(1);
        u32 slot = put_len_slot();
        put_s(cfg_field);
        put_c(" is not a number");
        fill_len_slot(slot);
        return finish();
    }
    if (!(value > cfg_above)) {
        put_byte(0);
        put_u32(0);
        return finish();
    }

    /* device: the second level of devices/{device}/... */
    str device = lit("unknown");
    if (topic.len > 8 && bytes_eq(topic.ptr, (const u8 *)"devices/", 8)) {
        u32 end = 8;
        while (end < topic.len && topic.ptr[end] != '/') end++;
        if (end > 8) device.ptr = topic.ptr + 8, device.len = end - 8;
    }

    put_byte(0);
    put_u32(1);
    /* topic: the template with {device} and {topic} replaced */
    u32 slot = put_len_slot();
    for (u32 i = 0; i < cfg_topic.len;) {
        const u8 *t = cfg_topic.ptr + i;
        u32 rest = cfg_topic.len - i;
        if (rest >= 8 && bytes_eq(t, (const u8 *)"{device}", 8)) {
            put_s(device);
            i += 8;
        } else if (rest >= 7 && bytes_eq(t, (const u8 *)"{topic}", 7)) {
            put_s(topic);
            i += 7;
        } else {
            put_byte(*t);
            i++;
        }
    }
    fill_len_slot(slot);
    /* payload */
    slot = put_len_slot();
    put_c("{\"device\":");
    put_json_string(device);
    put_c(",\"field\":");
    put_json_string(cfg_field);
    put_c(",\"value\":");
    put_s(value_text);
    put_c(",\"above\":");
    put_s(cfg_above_text);
    put_c(",\"topic\":");
    put_json_string(topic);
    put_c(",\"time_ms\":");
    put_i64(time_ms);
    put_byte('}');
    fill_len_slot(slot);
    /* content type, no user properties, the input's qos, not retained */
    put_u32(16);
    put_c("application/json");
    put_u32(0);
    put_byte(qos);
    put_byte(0);
    return finish();
}
