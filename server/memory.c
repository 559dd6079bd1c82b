/* memory.c -- the shard's memory account; see memory.h. */
#include "memory.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t limit_bytes, reserve_bytes;
static uint64_t used, peak, refused;
static uint64_t trim_mark; /* the highest `used` since the last trim */
static uint64_t by_cat[PSD_MEM_NCAT];

/* Named apart from every other stats field ("rounds", "lanes", "tensors"
 * are counts there), so that a scraper matching a name finds one field. */
static const char *const cat_names[PSD_MEM_NCAT] = {
    "mem_tensors", "mem_rounds", "mem_held",    "mem_output",
    "mem_input",   "mem_lanes",  "mem_scratch", "mem_meta", "mem_tables"};

void mem_set_limit(uint64_t bytes) { limit_bytes = bytes; }
void mem_set_reserve(uint64_t bytes) { reserve_bytes = bytes; }
uint64_t mem_reserve(void) { return reserve_bytes; }

uint64_t mem_default_reserve(uint64_t limit, uint64_t max_frame) {
  uint64_t r = max_frame < limit / 4 ? max_frame : limit / 4;
  return limit / 16 > r ? limit / 16 : r;
}
uint64_t mem_limit(void) { return limit_bytes; }
uint64_t mem_used(void) { return used; }
uint64_t mem_peak(void) { return peak; }

uint64_t mem_used_by(psd_mem_cat cat) { return by_cat[cat]; }
uint64_t mem_refusals(void) { return refused; }
void mem_count_refusal(void) { refused++; }

static uint64_t (*reclaim_fn)(void);

void mem_set_reclaim(uint64_t (*fn)(void)) { reclaim_fn = fn; }

/* Something that does not fit: give back what can go at once (spares),
 * then say whether to look again. */
static int reclaimed(void) { return reclaim_fn != NULL && reclaim_fn() > 0; }

static int fits_now(uint64_t bytes) {
  return limit_bytes == 0 || (bytes <= limit_bytes && used <= limit_bytes - bytes);
}

int mem_fits(uint64_t bytes) { return fits_now(bytes) || (reclaimed() && fits_now(bytes)); }

void mem_charge(psd_mem_cat cat, uint64_t bytes) {
  used += bytes;
  by_cat[cat] += bytes;
  if (used > peak) peak = used;
  if (used > trim_mark) trim_mark = used;
}

int mem_trim_due(void) {
  uint64_t step = limit_bytes / 64 > (32u << 20) ? limit_bytes / 64 : (32u << 20);
  return trim_mark > used + step;
}

void mem_trimmed(void) { trim_mark = used; }

int mem_take(psd_mem_cat cat, uint64_t bytes) {
  if (!mem_fits(bytes)) {
    refused++;
    return -1;
  }
  mem_charge(cat, bytes);
  return 0;
}

static int fits_growth_now(uint64_t bytes) {
  if (limit_bytes == 0) return 1;
  uint64_t room = limit_bytes > reserve_bytes ? limit_bytes - reserve_bytes : 0;
  return bytes <= room && used <= room - bytes;
}

int mem_fits_growth(uint64_t bytes) {
  return fits_growth_now(bytes) || (reclaimed() && fits_growth_now(bytes));
}

int mem_take_growth(psd_mem_cat cat, uint64_t bytes) {
  if (!mem_fits_growth(bytes)) {
    refused++;
    return -1;
  }
  mem_charge(cat, bytes);
  return 0;
}

void mem_release(psd_mem_cat cat, uint64_t bytes) {
  /* Never below zero, whatever a bug does: the account would wrap. */
  if (bytes > by_cat[cat]) bytes = by_cat[cat];
  by_cat[cat] -= bytes;
  used -= bytes;
}

/* A number from a one-line file; 0 if absent or "max". */
static uint64_t read_u64_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return 0;
  char line[64] = "";
  uint64_t v = 0;
  if (fgets(line, sizeof(line), f) && isdigit((unsigned char)line[0]))
    v = strtoull(line, NULL, 10);
  fclose(f);
  return v;
}

/* The memory.max of this process's cgroup (v2), 0 if none. */
static uint64_t cgroup_max(void) {
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (f == NULL) return 0;
  char line[1024], path[1200];
  uint64_t v = 0;
  while (fgets(line, sizeof(line), f)) {
    if (strncmp(line, "0::", 3) != 0) continue;
    line[strcspn(line, "\n")] = '\0';
    /* Inside a container the cgroup namespace makes this "/". Walk up:
     * a parent's limit applies too. */
    char *p = line + 3;
    for (;;) {
      snprintf(path, sizeof(path), "/sys/fs/cgroup%s/memory.max", strcmp(p, "/") ? p : "");
      uint64_t m = read_u64_file(path);
      if (m && (v == 0 || m < v)) v = m;
      char *slash = strrchr(p, '/');
      if (slash == NULL || slash == p) break;
      *slash = '\0';
    }
    if (strcmp(line + 3, "/") != 0) {
      uint64_t m = read_u64_file("/sys/fs/cgroup/memory.max");
      if (m && (v == 0 || m < v)) v = m;
    }
  }
  fclose(f);
  return v;
}

void *mem_alloc_data(size_t bytes) {
  return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

uint64_t mem_default_limit(char *why, size_t whylen) {
  long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
  uint64_t phys = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : (4ull << 30);
  uint64_t cg = cgroup_max();
  if (cg && cg < phys) {
    snprintf(why, whylen, "3/4 of the cgroup's memory.max (%llu bytes)", (unsigned long long)cg);
    return cg / 4 * 3;
  }
  snprintf(why, whylen, "3/4 of the machine's memory (%llu bytes)", (unsigned long long)phys);
  return phys / 4 * 3;
}

int mem_parse_size(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  if (s == NULL || !isdigit((unsigned char)s[0])) return -1;
  double v = strtod(s, &end);
  if (errno || !(v >= 0)) return -1;
  double mul = 1;
  switch (tolower((unsigned char)*end)) {
    case '\0': break;
    case 'k': mul = 1024.0; end++; break;
    case 'm': mul = 1024.0 * 1024; end++; break;
    case 'g': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    default: return -1;
  }
  if (mul > 1 && (*end == 'i' || *end == 'I')) end++;
  if (mul > 1 && (*end == 'b' || *end == 'B')) end++;
  if (*end != '\0') return -1;
  double b = floor(v * mul);
  if (b >= 18446744073709551616.0) return -1;
  *out = (uint64_t)b;
  return 0;
}

void mem_json(char *buf, size_t len) {
  size_t n = (size_t)snprintf(buf, len, "{\"limit\":%llu,\"reserve\":%llu,\"used\":%llu,"
                              "\"peak\":%llu",
                              (unsigned long long)limit_bytes, (unsigned long long)reserve_bytes,
                              (unsigned long long)used, (unsigned long long)peak);
  for (int i = 0; i < PSD_MEM_NCAT && n < len; i++)
    n += (size_t)snprintf(buf + n, len - n, ",\"%s\":%llu", cat_names[i],
                          (unsigned long long)by_cat[i]);
  if (n < len) snprintf(buf + n, len - n, ",\"mem_refused\":%llu}", (unsigned long long)refused);
}
