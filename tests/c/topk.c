/* A duorank collection read from C with libc and libsqlite3 only, as docs/format.md describes it.
 *
 *   cc -std=c99 -O2 -Wall -Wextra -o topk tests/c/topk.c -lsqlite3 -lm
 *   ./topk COLLECTION_DIR QUERIES.f32 [K]
 *
 * QUERIES.f32 holds raw little-endian float32 query vectors, dim of them per query (dim from the manifest).
 * For each query: exact inner-product top-K (default 10) over the memory-mapped, L2-normalised float32 rows
 * (the query normalised first, so scores are cosines), ranked as duorank ranks them (higher score first,
 * equal scores by smaller internal id), then each hit's external id and text from the SQLite document
 * store. stdout, one line per hit: query number, rank (1-based), external id, score, text, tab-separated,
 * with backslash, tab and newline in strings written as \\, \t and \n. Exit 0 ok, 1 error (on stderr).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static void die(const char *what, const char *detail) {
    fprintf(stderr, "topk: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) die(path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) die(path, "cannot seek");
    long n = ftell(f);
    rewind(f);
    char *s = malloc((size_t)n + 1);
    if (!s || fread(s, 1, (size_t)n, f) != (size_t)n) die(path, "cannot read");
    s[n] = '\0';
    fclose(f);
    return s;
}

/* The value after "key": in a JSON text, searched from `from` (the manifest is a flat JSON object whose
 * key names do not repeat outside the object they belong to, see docs/format.md). */
static const char *json_value(const char *from, const char *key) {
    char quoted[64];
    snprintf(quoted, sizeof quoted, "\"%s\"", key);
    const char *p = strstr(from, quoted);
    if (!p) return NULL;
    p += strlen(quoted);
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r') p++;
    return p;
}

static long json_int(const char *json, const char *key) {
    const char *v = json_value(json, key);
    if (!v) die("collection.json lacks the field", key);
    return strtol(v, NULL, 10);
}

/* A JSON string value without escapes (file names and format names are plain ASCII). */
static void json_string(const char *from, const char *key, char *out, size_t size) {
    const char *v = json_value(from, key);
    if (!v || *v != '"') die("collection.json lacks the string field", key);
    const char *end = strchr(v + 1, '"');
    if (!end || (size_t)(end - v - 1) >= size) die("collection.json: bad string field", key);
    memcpy(out, v + 1, (size_t)(end - v - 1));
    out[end - v - 1] = '\0';
}

/* files.<key>.file: the data file of this generation for `key` ("vectors", "ids", "docs"). */
static void data_file(const char *json, const char *dir, const char *key, char *out, size_t size) {
    const char *files = json_value(json, "files");
    if (!files) die("collection.json lacks", "files");
    const char *entry = json_value(files, key);
    if (!entry) die("collection.json names no file for", key);
    char name[256];
    json_string(entry, "file", name, sizeof name);
    snprintf(out, size, "%s/%s", dir, name);
}

typedef struct {
    const unsigned char *map;
    size_t bytes;
    const void *data; /* first element */
    long rows, cols;  /* cols 0 for a 1-d array */
} Npy;

/* Map a .npy file (format versions 1-3, C order, little-endian) and check its dtype and shape. */
static Npy map_npy(const char *path, const char *descr, long rows, long cols) {
    Npy a = {0};
    int fd = open(path, O_RDONLY);
    if (fd < 0) die(path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) die(path, strerror(errno));
    a.bytes = (size_t)st.st_size;
    a.map = mmap(NULL, a.bytes ? a.bytes : 1, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (a.map == MAP_FAILED) die(path, strerror(errno));
    if (a.bytes < 12 || memcmp(a.map, "\x93NUMPY", 6) != 0) die(path, "not a .npy file");
    size_t header_len, start;
    if (a.map[6] == 1) {
        header_len = (size_t)a.map[8] | (size_t)a.map[9] << 8;
        start = 10;
    } else {
        header_len = (size_t)a.map[8] | (size_t)a.map[9] << 8 | (size_t)a.map[10] << 16 |
                     (size_t)a.map[11] << 24;
        start = 12;
    }
    if (start + header_len > a.bytes) die(path, "truncated header");
    char header[1024];
    if (header_len >= sizeof header) die(path, "header too long");
    memcpy(header, a.map + start, header_len);
    header[header_len] = '\0';
    char want[64];
    snprintf(want, sizeof want, "'descr': '%s'", descr);
    if (!strstr(header, want)) die(path, "unexpected dtype (see docs/format.md)");
    if (!strstr(header, "'fortran_order': False")) die(path, "not C order");
    const char *shape = strstr(header, "'shape': (");
    if (!shape) die(path, "no shape");
    shape += strlen("'shape': (");
    char *end;
    a.rows = strtol(shape, &end, 10);
    a.cols = 0;
    if (*end == ',' && end[1] == ' ' && end[2] != ')') a.cols = strtol(end + 2, NULL, 10);
    if (a.rows != rows || a.cols != cols) die(path, "shape differs from the manifest's count and dim");
    size_t item = descr[2] == '8' ? 8 : 4;
    size_t need = (size_t)rows * (size_t)(cols ? cols : 1) * item;
    if (start + header_len + need > a.bytes) die(path, "truncated data");
    a.data = a.map + start + header_len;
    return a;
}

static void print_escaped(const unsigned char *s) {
    for (; s && *s; s++) {
        if (*s == '\\') fputs("\\\\", stdout);
        else if (*s == '\t') fputs("\\t", stdout);
        else if (*s == '\n') fputs("\\n", stdout);
        else putchar(*s);
    }
}

int main(int argc, char **argv) {
    if (argc < 3 || argc > 4) {
        fprintf(stderr, "usage: %s COLLECTION_DIR QUERIES.f32 [K]\n", argv[0]);
        return 2;
    }
    const char *dir = argv[1];
    long k = argc == 4 ? strtol(argv[3], NULL, 10) : 10;
    if (k < 1) die("K must be >= 1", argv[3]);

    char path[4096];
    snprintf(path, sizeof path, "%s/collection.json", dir);
    char *manifest = read_text(path);
    char format[64];
    json_string(manifest, "format", format, sizeof format);
    if (strcmp(format, "duorank-collection") != 0) die("not a duorank collection", format);
    if (json_int(manifest, "version") != 1) die("unknown collection format version", NULL);
    long dim = json_int(manifest, "dim"), count = json_int(manifest, "count");

    data_file(manifest, dir, "vectors", path, sizeof path);
    Npy vectors = map_npy(path, "<f4", count, dim);
    data_file(manifest, dir, "ids", path, sizeof path);
    Npy ids = map_npy(path, "<i8", count, 0);
    const float *rows = vectors.data;
    const int64_t *row_ids = ids.data;

    char docs[4096];
    data_file(manifest, dir, "docs", docs, sizeof docs);
    char uri[4200];
    snprintf(uri, sizeof uri, "file:%s?immutable=1", docs); /* a saved generation never changes */
    sqlite3 *db;
    if (sqlite3_open_v2(uri, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL) != SQLITE_OK)
        die(docs, sqlite3_errmsg(db));
    sqlite3_stmt *get;
    if (sqlite3_prepare_v2(db, "SELECT external_id, text FROM documents WHERE id = ?", -1, &get, NULL) !=
        SQLITE_OK)
        die(docs, sqlite3_errmsg(db));

    FILE *qf = fopen(argv[2], "rb");
    if (!qf) die(argv[2], strerror(errno));
    float *q = malloc(sizeof(float) * (size_t)dim);
    long *best = malloc(sizeof(long) * (size_t)k); /* row numbers, best first */
    float *best_score = malloc(sizeof(float) * (size_t)k);
    if (!q || !best || !best_score) die("out of memory", NULL);
    for (long qi = 0; fread(q, sizeof(float), (size_t)dim, qf) == (size_t)dim; qi++) {
        double norm = 0;
        for (long j = 0; j < dim; j++) norm += (double)q[j] * q[j];
        norm = sqrt(norm);
        for (long j = 0; j < dim; j++) q[j] = norm > 0 ? (float)(q[j] / norm) : 0.0f;
        long filled = 0;
        for (long r = 0; r < count; r++) {
            const float *row = rows + (size_t)r * (size_t)dim;
            float s = 0;
            for (long j = 0; j < dim; j++) s += q[j] * row[j];
            /* insert (s, id) if it ranks before the last kept: higher score, then smaller id */
            long at = filled;
            while (at > 0 && (best_score[at - 1] < s ||
                              (best_score[at - 1] == s && row_ids[best[at - 1]] > row_ids[r])))
                at--;
            if (at >= k) continue;
            long last = filled < k ? filled : k - 1;
            for (long m = last; m > at; m--) {
                best[m] = best[m - 1];
                best_score[m] = best_score[m - 1];
            }
            best[at] = r;
            best_score[at] = s;
            if (filled < k) filled++;
        }
        for (long rank = 0; rank < filled; rank++) {
            sqlite3_reset(get);
            sqlite3_bind_int64(get, 1, row_ids[best[rank]]);
            if (sqlite3_step(get) != SQLITE_ROW) die("a hit's id is missing from the document store", NULL);
            printf("%ld\t%ld\t", qi, rank + 1);
            print_escaped(sqlite3_column_text(get, 0));
            printf("\t%.7g\t", best_score[rank]);
            print_escaped(sqlite3_column_text(get, 1));
            putchar('\n');
        }
    }
    fclose(qf);
    sqlite3_finalize(get);
    sqlite3_close(db);
    munmap((void *)vectors.map, vectors.bytes);
    munmap((void *)ids.map, ids.bytes);
    free(manifest);
    free(q);
    free(best);
    free(best_score);
    return 0;
}
