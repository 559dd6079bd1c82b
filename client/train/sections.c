/*
 * sections.c -- the package index read as stanzas, each package turned into
 * hashed feature keys and a Section label (see sections.h for the features).
 *
 * The reader keeps only four fields of a stanza (Package, Section, the first
 * line of Description, Depends) and extracts the package's features as soon
 * as its stanza ends, so memory holds keys, not text.
 */
#include "sections.h"

#include <ctype.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <zlib.h>

/* ---- hashing ------------------------------------------------------------ */

uint64_t sections_key(char kind, const char *tok, size_t len, int rows_log2) {
  uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a 64 */
  h = (h ^ (uint8_t)kind) * 0x100000001b3ULL;
  h = (h ^ 0x1f) * 0x100000001b3ULL; /* a separator no token holds */
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)tok[i]) * 0x100000001b3ULL;
  /* FNV's low bits are weak for short strings: mix before cutting. */
  h ^= h >> 30;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 27;
  h *= 0x94d049bb133111ebULL;
  h ^= h >> 31;
  return h & ((1ULL << rows_log2) - 1);
}

int sections_is_test(const char *name, size_t len) {
  uLong c = crc32(0L, (const Bytef *)name, (uInt)len);
  return c % 10 == 0;
}

/* ---- growable arrays ----------------------------------------------------- */

typedef struct {
  void *p;
  size_t n, cap, elem;
} vec;

static int vec_reserve(vec *v, size_t more) {
  if (v->n + more <= v->cap) return 0;
  size_t cap = v->cap ? v->cap : 1024;
  while (cap < v->n + more) cap *= 2;
  void *p = realloc(v->p, cap * v->elem);
  if (p == NULL) return -1;
  v->p = p;
  v->cap = cap;
  return 0;
}

static int vec_push(vec *v, const void *x) {
  if (vec_reserve(v, 1) != 0) return -1;
  memcpy((char *)v->p + v->n * v->elem, x, v->elem);
  v->n++;
  return 0;
}

/* ---- one stanza ----------------------------------------------------------- */

typedef struct {
  char *package, *section, *desc, *depends;
} stanza;

static void stanza_clear(stanza *s) {
  free(s->package);
  free(s->section);
  free(s->desc);
  free(s->depends);
  memset(s, 0, sizeof *s);
}

/* The state of one read: what has been extracted so far. */
typedef struct {
  int rows_log2;
  size_t limit;
  vec off, keys, label_name, is_test; /* label_name: char * per package */
  size_t skipped;
  int oom;
} reader;

static int add_key(reader *r, char kind, const char *tok, size_t len) {
  uint64_t k = sections_key(kind, tok, len, r->rows_log2);
  return vec_push(&r->keys, &k);
}

/* A letter or digit of a word; bytes of UTF-8 sequences count as letters,
 * so that a non-ASCII word stays one word. */
static int word_byte(unsigned char c) { return isalnum(c) || c >= 0x80; }

/* The name's tokens, then its first and last token as prefix and suffix. */
static int name_features(reader *r, const char *name) {
  const char *p = name, *first = NULL, *last = NULL;
  size_t first_len = 0, last_len = 0;
  while (*p) {
    size_t len = strcspn(p, "-.+");
    if (len > 0) {
      if (add_key(r, 'n', p, len) != 0) return -1;
      if (first == NULL) {
        first = p;
        first_len = len;
      }
      last = p;
      last_len = len;
    }
    p += len;
    if (*p) p++;
  }
  if (first != NULL && add_key(r, 'p', first, first_len) != 0) return -1;
  if (last != NULL && add_key(r, 's', last, last_len) != 0) return -1;
  return 0;
}

/* Words lowercased in place, then every word and every adjacent pair. */
static int desc_features(reader *r, char *desc) {
  for (char *c = desc; *c; c++) *c = (char)tolower((unsigned char)*c);
  const char *prev = NULL;
  size_t prev_len = 0;
  char pair[512];
  for (char *p = desc; *p;) {
    while (*p && !word_byte((unsigned char)*p)) p++;
    if (!*p) break;
    char *w = p;
    while (*p && word_byte((unsigned char)*p)) p++;
    size_t len = (size_t)(p - w);
    if (add_key(r, 'w', w, len) != 0) return -1;
    if (prev != NULL && prev_len + 1 + len <= sizeof pair) {
      memcpy(pair, prev, prev_len);
      pair[prev_len] = ' ';
      memcpy(pair + prev_len + 1, w, len);
      if (add_key(r, 'b', pair, prev_len + 1 + len) != 0) return -1;
    }
    prev = w;
    prev_len = len;
  }
  return 0;
}

/* "a (>= 1), b:any | c [amd64]" -> a, b, c. */
static int depends_features(reader *r, const char *deps) {
  for (const char *p = deps; *p;) {
    while (*p == ' ' || *p == '\t' || *p == ',' || *p == '|') p++;
    if (!*p) break;
    size_t len = strcspn(p, " \t,|(:[<");
    if (len > 0 && add_key(r, 'd', p, len) != 0) return -1;
    p += len;
    /* Skip the version, qualifier or restriction up to the next name. */
    while (*p && *p != ',' && *p != '|') p++;
  }
  return 0;
}

/* Section "contrib/net" -> "net"; a copy the caller owns. */
static char *section_label(const char *section) {
  const char *slash = strrchr(section, '/');
  return strdup(slash ? slash + 1 : section);
}

/* The stanza is complete: extract its package, or count it skipped. */
static int finish_stanza(reader *r, stanza *s) {
  if (s->package == NULL && s->section == NULL && s->desc == NULL &&
      s->depends == NULL)
    return 0; /* blank lines between stanzas */
  if (s->package == NULL || s->section == NULL || *s->package == '\0' ||
      *s->section == '\0') {
    r->skipped++;
    return 0;
  }
  if (r->limit > 0 && r->is_test.n >= r->limit) return 0;
  if (r->off.n == 0) {
    size_t zero = 0;
    if (vec_push(&r->off, &zero) != 0) return -1;
  }
  char *label = section_label(s->section);
  uint8_t test = (uint8_t)sections_is_test(s->package, strlen(s->package));
  if (label == NULL || vec_push(&r->label_name, &label) != 0) {
    free(label);
    return -1;
  }
  if (name_features(r, s->package) != 0) return -1;
  if (s->desc != NULL && desc_features(r, s->desc) != 0) return -1;
  if (s->depends != NULL && depends_features(r, s->depends) != 0) return -1;
  size_t end = r->keys.n;
  if (vec_push(&r->off, &end) != 0 || vec_push(&r->is_test, &test) != 0) return -1;
  return 0;
}

/* v with its leading blanks and trailing blanks and newline cut, as a copy;
 * NULL when out of memory. */
static char *trim_copy(const char *v) {
  while (*v == ' ' || *v == '\t') v++;
  size_t len = strcspn(v, "\r\n");
  while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t')) len--;
  return strndup(v, len);
}

/* Keep line if it is one of the four fields. *cont is the field a
 * continuation line (starting with a blank) extends: Depends may be folded;
 * a Description's following lines are its long text, not a feature here. */
static int take_line(stanza *s, const char *line, char ***cont) {
  static const struct {
    const char *name;
    size_t off;
  } fields[] = {
      {"Package", offsetof(stanza, package)},
      {"Section", offsetof(stanza, section)},
      {"Description", offsetof(stanza, desc)},
      {"Depends", offsetof(stanza, depends)},
  };
  if (line[0] == ' ' || line[0] == '\t') {
    if (*cont == NULL) return 0;
    char *more = trim_copy(line);
    if (more == NULL) return -1;
    size_t a = strlen(**cont), b = strlen(more);
    char *joined = realloc(**cont, a + b + 2);
    if (joined == NULL) {
      free(more);
      return -1;
    }
    joined[a] = ' ';
    memcpy(joined + a + 1, more, b + 1);
    free(more);
    **cont = joined;
    return 0;
  }
  *cont = NULL;
  for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
    size_t n = strlen(fields[i].name);
    if (strncmp(line, fields[i].name, n) != 0 || line[n] != ':') continue;
    char **slot = (char **)((char *)s + fields[i].off);
    if (*slot != NULL) return 0; /* the first one counts */
    *slot = trim_copy(line + n + 1);
    if (*slot == NULL) return -1;
    if (slot == &s->depends) *cont = slot;
    return 0;
  }
  return 0;
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Number the labels: the distinct section names in byte order. */
static int number_labels(reader *r, sections_data *d, char *err, size_t errlen) {
  size_t n = r->label_name.n;
  char **names = r->label_name.p;
  char **sorted = malloc(n * sizeof *sorted);
  d->label = malloc(n);
  if (sorted == NULL || d->label == NULL) {
    free(sorted);
    snprintf(err, errlen, "out of memory numbering %zu labels", n);
    return -1;
  }
  memcpy(sorted, names, n * sizeof *sorted);
  qsort(sorted, n, sizeof *sorted, cmp_str);
  int k = 0;
  for (size_t i = 0; i < n; i++) {
    if (i > 0 && strcmp(sorted[i], sorted[i - 1]) == 0) continue;
    if (k == SECTIONS_MAX_CLASSES) {
      free(sorted);
      snprintf(err, errlen, "the index has more than %d sections", SECTIONS_MAX_CLASSES);
      return -1;
    }
    d->classes[k] = strdup(sorted[i]);
    if (d->classes[k] == NULL) {
      free(sorted);
      snprintf(err, errlen, "out of memory numbering labels");
      return -1;
    }
    d->nclasses = ++k;
  }
  free(sorted);
  for (size_t i = 0; i < n; i++) {
    char **hit = bsearch(&names[i], d->classes, (size_t)d->nclasses,
                         sizeof d->classes[0], cmp_str);
    d->label[i] = (uint8_t)(hit - d->classes);
  }
  return 0;
}

static void reader_free(reader *r) {
  char **names = r->label_name.p;
  for (size_t i = 0; i < r->label_name.n; i++) free(names[i]);
  free(r->off.p);
  free(r->keys.p);
  free(r->label_name.p);
  free(r->is_test.p);
}

/* Hand the reader's arrays to d and build the split's index lists. */
static int build(reader *r, sections_data *d, char *err, size_t errlen) {
  d->n = r->is_test.n;
  d->skipped = r->skipped;
  d->rows_log2 = r->rows_log2;
  if (number_labels(r, d, err, errlen) != 0) return -1;
  d->off = r->off.p;
  d->keys = r->keys.p;
  d->is_test = r->is_test.p;
  r->off.p = r->keys.p = r->is_test.p = NULL;
  for (size_t i = 0; i < d->n; i++) d->ntest += d->is_test[i];
  d->ntrain = d->n - d->ntest;
  d->train = malloc((d->ntrain + 1) * sizeof *d->train);
  d->test = malloc((d->ntest + 1) * sizeof *d->test);
  if (d->train == NULL || d->test == NULL) {
    snprintf(err, errlen, "out of memory splitting %zu packages", d->n);
    return -1;
  }
  size_t a = 0, b = 0;
  for (size_t i = 0; i < d->n; i++) {
    if (d->is_test[i])
      d->test[b++] = i;
    else
      d->train[a++] = i;
  }
  return 0;
}

int sections_read(FILE *f, size_t limit, int rows_log2, sections_data *d,
                  char *err, size_t errlen) {
  reader r;
  stanza s;
  char *line = NULL, **cont = NULL;
  size_t cap = 0;
  ssize_t got;
  memset(d, 0, sizeof *d);
  memset(&r, 0, sizeof r);
  memset(&s, 0, sizeof s);
  if (rows_log2 < 8 || rows_log2 > 40) {
    snprintf(err, errlen, "rows_log2 %d is outside [8, 40]", rows_log2);
    return -1;
  }
  r.rows_log2 = rows_log2;
  r.limit = limit;
  r.off.elem = sizeof(size_t);
  r.keys.elem = sizeof(uint64_t);
  r.label_name.elem = sizeof(char *);
  r.is_test.elem = 1;
  errno = 0;
  while ((got = getline(&line, &cap, f)) >= 0) {
    int rc;
    if (line[0] == '\n' || (line[0] == '\r' && line[1] == '\n')) {
      rc = finish_stanza(&r, &s);
      stanza_clear(&s);
      cont = NULL;
    } else {
      rc = take_line(&s, line, &cont);
    }
    if (rc != 0) goto oom;
  }
  if (ferror(f)) {
    snprintf(err, errlen, "reading the package index: %s", strerror(errno ? errno : EIO));
    goto fail;
  }
  if (finish_stanza(&r, &s) != 0) goto oom;
  if (r.is_test.n == 0) {
    snprintf(err, errlen, "the package index holds no package with a Section");
    goto fail;
  }
  if (build(&r, d, err, errlen) != 0) goto fail;
  stanza_clear(&s);
  free(line);
  reader_free(&r);
  return 0;
oom:
  snprintf(err, errlen, "out of memory reading the package index");
fail:
  stanza_clear(&s);
  free(line);
  reader_free(&r);
  sections_free(d);
  return -1;
}

int sections_load(const char *path, size_t limit, int rows_log2,
                  sections_data *d, char *err, size_t errlen) {
  if (path != NULL) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
    if (f == NULL) {
      snprintf(err, errlen, "%s: %s", path, strerror(errno));
      return -1;
    }
    int rc = sections_read(f, limit, rows_log2, d, err, errlen);
    if (f != stdin) fclose(f);
    return rc;
  }
  FILE *p = popen("apt-cache dumpavail 2>/dev/null", "r");
  if (p == NULL) {
    snprintf(err, errlen, "cannot run apt-cache dumpavail: %s", strerror(errno));
    return -1;
  }
  char inner[512] = "";
  int rc = sections_read(p, limit, rows_log2, d, inner, sizeof inner);
  int status = pclose(p);
  if (rc == 0 && status != 0) {
    sections_free(d);
    rc = -1;
    snprintf(inner, sizeof inner, "apt-cache dumpavail exited with status %d",
             WIFEXITED(status) ? WEXITSTATUS(status) : -1);
  }
  if (rc != 0)
    snprintf(err, errlen,
             "the machine's package index (apt-cache dumpavail): %s; run "
             "apt-get update to fetch it, or give an index file with --index",
             inner);
  return rc;
}

void sections_free(sections_data *d) {
  free(d->off);
  free(d->keys);
  free(d->label);
  free(d->is_test);
  free(d->train);
  free(d->test);
  for (int i = 0; i < d->nclasses; i++) free(d->classes[i]);
  memset(d, 0, sizeof *d);
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

size_t sections_distinct_train_keys(const sections_data *d) {
  size_t total = 0;
  for (size_t i = 0; i < d->ntrain; i++) {
    size_t p = d->train[i];
    total += d->off[p + 1] - d->off[p];
  }
  uint64_t *all = malloc((total + 1) * sizeof *all);
  if (all == NULL) return 0;
  size_t k = 0;
  for (size_t i = 0; i < d->ntrain; i++) {
    size_t p = d->train[i];
    for (size_t j = d->off[p]; j < d->off[p + 1]; j++) all[k++] = d->keys[j];
  }
  qsort(all, k, sizeof *all, cmp_u64);
  size_t distinct = 0;
  for (size_t i = 0; i < k; i++)
    if (i == 0 || all[i] != all[i - 1]) distinct++;
  free(all);
  return distinct;
}
