/*
 * main.c -- the psd daemon: flags and environment, signals, start and stop.
 *
 * Every flag has an environment variable (PSD_LISTEN for --listen, ...), as
 * container operators expect; a flag given on the command line wins.
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "log.h"
#include "numfmt.h"
#include "memory.h"
#include "apply.h"
#include "spare.h"
#include "wire.h"
#include "checkpoint.h"
#include "dedupe.h"
#include "access.h"
#include "group.h"
#include "job.h"
#include "metrics.h"
#include "outbox.h"
#include "server.h"
#include "session.h"
#include "table.h"
#include "tensor.h"

static const char usage[] =
    "Usage: psd [OPTIONS]\n"
    "psd is a parameter server shard: it holds named float32 tensors, initializes them\n"
    "and applies optimizer updates to the gradients that workers push.\n"
    "\n"
    "Options (each also read from the environment variable in brackets):\n"
    "  --listen HOST:PORT        address to listen on [PSD_LISTEN] (default 127.0.0.1:7070;\n"
    "                            0.0.0.0:7070 in a container; port 0 picks a free port)\n"
    "  --log-level LEVEL         debug, info, warn, error [PSD_LOG_LEVEL] (default info)\n"
    "  --log-format FORMAT       text, or json: one JSON object per line with time, level,\n"
    "                            component, pid, msg and fields [PSD_LOG_FORMAT] (default text)\n"
    "  --max-frame BYTES         largest frame accepted [PSD_MAX_FRAME] (default 67108864)\n"
    "  --out-cap BYTES           unread replies buffered per connection before psd stops\n"
    "                            reading from it [PSD_OUT_CAP] (default 67108864)\n"
    "  --block-size N            default elements per block [PSD_BLOCK_SIZE] (default 262144)\n"
    "  --worker-timeout SECONDS  a worker silent this long leaves the job\n"
    "                            [PSD_WORKER_TIMEOUT] (default 10)\n"
    "  --data-dir DIR            write checkpoints here and restore the newest valid one\n"
    "                            at start [PSD_DATA_DIR] (default: no checkpoints)\n"
    "  --checkpoint-every SECONDS  also checkpoint periodically [PSD_CHECKPOINT_EVERY]\n"
    "                            (default 0: only on demand and at SIGTERM/SIGINT)\n"
    "  --keep N                  checkpoints kept in DIR [PSD_KEEP] (default 3)\n"
    "  --lane-mb N               largest shared-memory lane granted to a worker on this\n"
    "                            host, MiB [PSD_LANE_MB] (default 256; 0: TCP only)\n"
    "  --update-threads N        1, or 2: a helper thread takes half of every update of\n"
    "                            a block of 64K elements or more [PSD_UPDATE_THREADS]\n"
    "                            (default 2 on a machine with several CPUs)\n"
    "  --max-memory BYTES        memory ceiling: tensors, rounds, replies, buffers, lanes;\n"
    "                            a request that would cross it is refused with\n"
    "                            RESOURCE_EXHAUSTED (suffixes k, M, G, T) [PSD_MAX_MEMORY]\n"
    "                            (default 3/4 of the machine's or the cgroup's memory)\n"
    "  --max-clients N           connections served; past it a new one gets an Error and\n"
    "                            is closed [PSD_MAX_CLIENTS] (default 10000, lowered to fit\n"
    "                            the file descriptor limit)\n"
    "  --frame-timeout SECONDS   a frame must arrive whole this long after its first byte\n"
    "                            [PSD_FRAME_TIMEOUT] (default 30)\n"
    "  --hello-timeout SECONDS   a new connection must complete its hello within this\n"
    "                            [PSD_HELLO_TIMEOUT] (default 10)\n"
    "  --idle-timeout SECONDS    close non-worker connections silent this long\n"
    "                            [PSD_IDLE_TIMEOUT] (default 300; 0: never)\n"
    "  --max-workers N           largest job a worker's hello may announce\n"
    "                            [PSD_MAX_WORKERS] (default 1024)\n"
    "  --stall-log-ms MS         log every turn of the event loop busy this long or\n"
    "                            longer, with its duration [PSD_STALL_LOG_MS] (default 100)\n"
    "  --max-jobs N              jobs served at once (named by PS_JOB in the clients)\n"
    "                            [PSD_MAX_JOBS] (default 64)\n"
    "\n"
    "Trust (README, Security):\n"
    "  --token-file ROLE=PATH    the token of ROLE (admin, worker or reader) is the content\n"
    "                            of PATH; repeat for each role [PSD_TOKEN_FILE, a comma-\n"
    "                            separated list of ROLE=PATH]. Tokens are read from files\n"
    "                            only; a file every user may read is refused. Without any\n"
    "                            token psd is in protected mode: it serves loopback peers\n"
    "                            only, each as an admin, and will not listen beyond loopback\n"
    "  --insecure                no tokens, yet listen on any address (every peer is an\n"
    "                            admin; logged as a warning) [PSD_INSECURE=1]\n"
    "  --auth-fail-limit N       this many failed authentications from one address within\n"
    "                            --auth-fail-window refuse its connections for --auth-ban\n"
    "                            [PSD_AUTH_FAIL_LIMIT] (default 5; 0: never)\n"
    "  --auth-fail-window SECONDS  [PSD_AUTH_FAIL_WINDOW] (default 60)\n"
    "  --auth-ban SECONDS        [PSD_AUTH_BAN] (default 30)\n"
    "  --servers LIST --index N  this shard is entry N (from 0) of the job's server list\n"
    "                            [PSD_SERVERS, PSD_INDEX]; without them an admin's first\n"
    "                            tensor request sets the list (workers and readers never do)\n"
    "  --metrics-listen HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
    "                            [PSD_METRICS_LISTEN] (default: off; 0.0.0.0:9070 in the image)\n"
    "  --metrics-auth            the metrics endpoint wants the reader token as\n"
    "                            'Authorization: Bearer TOKEN' [PSD_METRICS_AUTH=1]\n"
    "  --metrics-tensor-labels   also per-tensor series, labelled with tensor names\n"
    "                            [PSD_METRICS_TENSOR_LABELS=1] (default off: names are\n"
    "                            unbounded label values)\n"
    "  --help                    this text\n"
    "  --version                 print the version\n"
    "\n"
    "SIGTERM or SIGINT: stop accepting, send the replies already queued (closing\n"
    "connections that do not read them within 2 s), write a final checkpoint when\n"
    "--data-dir is set, exit 0. The protocol is documented in proto/psd.proto.\n";

/* Free everything the shard holds. */
static void state_free(psd_server *srv) {
  outbox_free(&srv->outbox);
  sessions_free(srv);
  jobs_free(NULL, &srv->jobs);
  tensor_vstat_free(srv);
  if (srv->have_list) psp_servers_free(&srv->servers);
  srv->have_list = 0;
  apply_buffers_free(srv);
  table_buffers_free(srv);
}

static int parse_u64(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || *end || s[0] == '\0' || s[0] == '-') return -1;
  *out = v;
  return 0;
}

/* 1, true, yes, on / 0, false, no, off. */
static int parse_bool(const char *s, int *out) {
  static const char *const yes[] = {"1", "true", "yes", "on"}, *const no[] = {"0", "false", "no", "off"};
  for (int i = 0; i < 4; i++) {
    if (strcasecmp(s, yes[i]) == 0) return *out = 1, 0;
    if (strcasecmp(s, no[i]) == 0) return *out = 0, 0;
  }
  return -1;
}

static int parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || *end || s[0] == '\0' || !(v >= 0)) return -1;
  *out = v;
  return 0;
}

/* Apply one option; used for both the environment and the command line. */
static int set_option(psd_config *cfg, const char *name, const char *val) {
  uint64_t u;
  double d;
  if (strcmp(name, "listen") == 0) {
    if (strlen(val) >= sizeof(cfg->listen)) return -1;
    strcpy(cfg->listen, val);
  } else if (strcmp(name, "log-level") == 0) {
    int l = plog_parse_level(val);
    if (l < 0) return -1;
    plog_set_level(l);
  } else if (strcmp(name, "max-frame") == 0) {
    if (parse_u64(val, &u) || u < 65536) return -1;
    cfg->max_frame = u;
  } else if (strcmp(name, "out-cap") == 0) {
    if (parse_u64(val, &u) || u < 65536) return -1;
    cfg->out_cap = u;
  } else if (strcmp(name, "block-size") == 0) {
    if (parse_u64(val, &u) || u == 0) return -1;
    cfg->default_block = u;
  } else if (strcmp(name, "worker-timeout") == 0) {
    if (parse_double(val, &d) || d <= 0) return -1;
    cfg->worker_timeout = d;
  } else if (strcmp(name, "data-dir") == 0) {
    if (strlen(val) >= sizeof(cfg->data_dir)) return -1;
    strcpy(cfg->data_dir, val);
  } else if (strcmp(name, "checkpoint-every") == 0) {
    if (parse_double(val, &d)) return -1;
    cfg->checkpoint_every = d;
  } else if (strcmp(name, "lane-mb") == 0) {
    if (parse_u64(val, &u) || u > (PSL_MAX_BYTES >> 20)) return -1;
    cfg->lane_max = u << 20;
  } else if (strcmp(name, "update-threads") == 0) {
    if (parse_u64(val, &u) || u < 1 || u > 2) return -1;
    cfg->update_threads = (int)u;
  } else if (strcmp(name, "max-memory") == 0) {
    if (mem_parse_size(val, &u) || u < (1u << 20)) return -1;
    cfg->max_memory = u;
  } else if (strcmp(name, "max-clients") == 0) {
    if (parse_u64(val, &u) || u == 0 || u > 10000000) return -1;
    cfg->max_clients = u;
    cfg->max_clients_set = 1;
  } else if (strcmp(name, "frame-timeout") == 0) {
    if (parse_double(val, &d) || d <= 0) return -1;
    cfg->frame_timeout = d;
  } else if (strcmp(name, "hello-timeout") == 0) {
    if (parse_double(val, &d) || d <= 0) return -1;
    cfg->hello_timeout = d;
  } else if (strcmp(name, "idle-timeout") == 0) {
    if (parse_double(val, &d)) return -1;
    cfg->idle_timeout = d;
  } else if (strcmp(name, "max-workers") == 0) {
    if (parse_u64(val, &u) || u < 1 || u > 65536) return -1;
    cfg->max_workers = (uint32_t)u;
  } else if (strcmp(name, "stall-log-ms") == 0) {
    if (parse_double(val, &d) || d > 3600e3) return -1;
    cfg->stall_log_ms = d;
  } else if (strcmp(name, "max-jobs") == 0) {
    if (parse_u64(val, &u) || u < 1 || u > 65536) return -1;
    cfg->max_jobs = (uint32_t)u;
  } else if (strcmp(name, "token-file") == 0) {
    /* ROLE=PATH, or several separated by commas (PSD_TOKEN_FILE). */
    char buf[4096];
    if (strlen(val) >= sizeof(buf)) return -1;
    strcpy(buf, val);
    char *save = NULL;
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
      char *eq = strchr(item, '=');
      if (eq == NULL) return -1;
      *eq = '\0';
      int role = psa_role_parse(item);
      if (role < 0 || eq[1] == '\0' || strlen(eq + 1) >= sizeof(cfg->token_path[0])) return -1;
      strcpy(cfg->token_path[role], eq + 1);
    }
  } else if (strcmp(name, "auth-fail-limit") == 0) {
    if (parse_u64(val, &u) || u > 1000000) return -1;
    cfg->auth_fail_limit = (uint32_t)u;
  } else if (strcmp(name, "auth-fail-window") == 0) {
    if (parse_double(val, &d) || d <= 0 || d > 86400.0 * 365) return -1;
    cfg->auth_fail_window = d;
  } else if (strcmp(name, "auth-ban") == 0) {
    if (parse_double(val, &d) || d <= 0 || d > 86400.0 * 365) return -1;
    cfg->auth_ban = d;
  } else if (strcmp(name, "insecure") == 0) {
    if (strcmp(val, "1") == 0 || strcmp(val, "true") == 0 || strcmp(val, "yes") == 0)
      cfg->insecure = 1;
    else if (strcmp(val, "0") == 0 || strcmp(val, "false") == 0 || strcmp(val, "no") == 0)
      cfg->insecure = 0;
    else
      return -1;
  } else if (strcmp(name, "servers") == 0) {
    if (strlen(val) >= sizeof(cfg->servers)) return -1;
    strcpy(cfg->servers, val);
  } else if (strcmp(name, "index") == 0) {
    if (parse_u64(val, &u) || u > 65535) return -1;
    cfg->index = (int)u;
  } else if (strcmp(name, "log-format") == 0) {
    int f = plog_parse_format(val);
    if (f < 0) return -1;
    plog_set_format(f);
  } else if (strcmp(name, "metrics-listen") == 0) {
    if (strlen(val) >= sizeof(cfg->metrics_listen)) return -1;
    strcpy(cfg->metrics_listen, val);
  } else if (strcmp(name, "metrics-auth") == 0) {
    if (parse_bool(val, &cfg->metrics_auth)) return -1;
  } else if (strcmp(name, "metrics-tensor-labels") == 0) {
    if (parse_bool(val, &cfg->metrics_tensor_labels)) return -1;
  } else if (strcmp(name, "keep") == 0) {
    if (parse_u64(val, &u) || u == 0 || u > 1000) return -1;
    cfg->keep_checkpoints = (int)u;
  } else {
    return -1;
  }
  return 0;
}

static const char *const env_names[][2] = {
    {"PSD_LISTEN", "listen"},         {"PSD_LOG_LEVEL", "log-level"},
    {"PSD_MAX_FRAME", "max-frame"},   {"PSD_OUT_CAP", "out-cap"},
    {"PSD_BLOCK_SIZE", "block-size"}, {"PSD_WORKER_TIMEOUT", "worker-timeout"},
    {"PSD_DATA_DIR", "data-dir"},     {"PSD_CHECKPOINT_EVERY", "checkpoint-every"},
    {"PSD_KEEP", "keep"},             {"PSD_LANE_MB", "lane-mb"},
    {"PSD_UPDATE_THREADS", "update-threads"}, {"PSD_MAX_MEMORY", "max-memory"},
    {"PSD_MAX_CLIENTS", "max-clients"},       {"PSD_FRAME_TIMEOUT", "frame-timeout"},
    {"PSD_HELLO_TIMEOUT", "hello-timeout"},   {"PSD_IDLE_TIMEOUT", "idle-timeout"},
    {"PSD_UPDATE_THREADS", "update-threads"}, {"PSD_MAX_WORKERS", "max-workers"},
    {"PSD_MAX_JOBS", "max-jobs"},
    {"PSD_TOKEN_FILE", "token-file"},         {"PSD_INSECURE", "insecure"},
    {"PSD_AUTH_FAIL_LIMIT", "auth-fail-limit"}, {"PSD_AUTH_FAIL_WINDOW", "auth-fail-window"},
    {"PSD_AUTH_BAN", "auth-ban"},             {"PSD_STALL_LOG_MS", "stall-log-ms"},
    {"PSD_SERVERS", "servers"},               {"PSD_INDEX", "index"},
    {"PSD_LOG_FORMAT", "log-format"}, {"PSD_METRICS_LISTEN", "metrics-listen"},
    {"PSD_METRICS_AUTH", "metrics-auth"}, {"PSD_METRICS_TENSOR_LABELS", "metrics-tensor-labels"},
};

/* The shard's place in the job from --servers/--index: it must agree with
 * a restored checkpoint's (whose blocks were placed by it). 0 or -1. */
static int identity_from_config(psd_server *srv) {
  psd_config *cfg = &srv->cfg;
  if (!cfg->servers[0]) return 0;
  psp_servers s;
  char err[256];
  if (psp_servers_parse(&s, cfg->servers, err, sizeof(err)) != 0) {
    log_error("--servers '%s': %s", cfg->servers, err);
    return -1;
  }
  if (cfg->index >= s.n) {
    log_error("--index %d: the server list has %d entries (0..%d)", cfg->index, s.n, s.n - 1);
    psp_servers_free(&s);
    return -1;
  }
  if (srv->have_list) {
    int same = srv->servers.list_hash == s.list_hash && srv->shard_index == cfg->index;
    if (!same)
      log_error("the checkpoint in %s was written by shard %d of '%s'; --servers/--index say "
                "shard %d of '%s'; start with the checkpoint's identity, or another "
                "--data-dir",
                cfg->data_dir, srv->shard_index, srv->servers.list, cfg->index, s.list);
    psp_servers_free(&s);
    return same ? 0 : -1;
  }
  srv->servers = s;
  srv->have_list = 1;
  srv->shard_index = cfg->index;
  log_info("shard %d of '%s' (from --servers/--index)", cfg->index, srv->servers.list);
  return 0;
}

static psd_server the_server;

static void on_signal(uv_signal_t *h, int signum) {
  psd_server *srv = h->data;
  if (srv->stopping) {
    log_warn("second %s: exiting without waiting", strsignal(signum));
    exit(1);
  }
  log_info("%s: stopping", strsignal(signum));
  srv->stopping = 1;
  server_stop(srv);
  metrics_stop(srv);
  ckpt_stop(srv);
  uv_close((uv_handle_t *)&srv->sigint, NULL);
  uv_close((uv_handle_t *)&srv->sigterm, NULL);
}

int main(int argc, char **argv) {
  psd_server *srv = &the_server;
  psd_config *cfg = &srv->cfg;
  memset(srv, 0, sizeof(*srv));
  strcpy(cfg->listen, "127.0.0.1:7070");
  cfg->max_frame = PSW_DEFAULT_MAX_FRAME;
  cfg->out_cap = 64u << 20;
  cfg->worker_timeout = 10.0;
  cfg->keep_checkpoints = 3;
  cfg->default_block = PSD_DEFAULT_BLOCK;
  cfg->lane_max = 256u << 20;
  cfg->update_threads = sysconf(_SC_NPROCESSORS_ONLN) > 1 ? 2 : 1;
  cfg->max_clients = 10000;
  cfg->frame_timeout = 30.0;
  cfg->hello_timeout = 10.0;
  cfg->idle_timeout = 300.0;
  cfg->max_workers = PSD_DEFAULT_MAX_WORKERS;
  cfg->auth_fail_limit = AUTH_FAIL_LIMIT;
  cfg->auth_fail_window = AUTH_FAIL_WINDOW_S;
  cfg->auth_ban = AUTH_BAN_S;
  cfg->stall_log_ms = 100.0;
  cfg->max_jobs = PSD_DEFAULT_MAX_JOBS;
  cfg->index = -1;

  for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++) {
    const char *v = getenv(env_names[i][0]);
    if (v != NULL && v[0] != '\0' && set_option(cfg, env_names[i][1], v) != 0) {
      fprintf(stderr, "psd: invalid %s='%s'\n", env_names[i][0], v);
      return 2;
    }
  }

  static const struct option opts[] = {
      {"listen", required_argument, 0, 0},         {"log-level", required_argument, 0, 0},
      {"max-frame", required_argument, 0, 0},      {"out-cap", required_argument, 0, 0},
      {"block-size", required_argument, 0, 0},     {"worker-timeout", required_argument, 0, 0},
      {"data-dir", required_argument, 0, 0},       {"checkpoint-every", required_argument, 0, 0},
      {"keep", required_argument, 0, 0},           {"lane-mb", required_argument, 0, 0},
      {"update-threads", required_argument, 0, 0}, {"max-memory", required_argument, 0, 0},
      {"max-clients", required_argument, 0, 0},    {"frame-timeout", required_argument, 0, 0},
      {"hello-timeout", required_argument, 0, 0},  {"idle-timeout", required_argument, 0, 0},
      {"update-threads", required_argument, 0, 0}, {"max-workers", required_argument, 0, 0},
      {"max-jobs", required_argument, 0, 0},
      {"token-file", required_argument, 0, 0},     {"insecure", no_argument, 0, 0},
      {"auth-fail-limit", required_argument, 0, 0}, {"auth-fail-window", required_argument, 0, 0},
      {"auth-ban", required_argument, 0, 0},     {"stall-log-ms", required_argument, 0, 0},
      {"servers", required_argument, 0, 0},        {"index", required_argument, 0, 0},
      {"log-format", required_argument, 0, 0},     {"metrics-listen", required_argument, 0, 0},
      {"metrics-auth", no_argument, 0, 0},         {"metrics-tensor-labels", no_argument, 0, 0},
      {"help", no_argument, 0, 'h'},
      {"version", no_argument, 0, 'V'},            {0, 0, 0, 0}};
  for (;;) {
    int idx = 0;
    int ch = getopt_long(argc, argv, "hV", opts, &idx);
    if (ch == -1) break;
    if (ch == 'h') {
      fputs(usage, stdout);
      return 0;
    }
    if (ch == 'V') {
      printf("psd %s (protocol %d)\n", PS_VERSION_STRING, PS_PROTOCOL_VERSION);
      return 0;
    }
    if (ch != 0) {
      fputs(usage, stderr);
      return 2;
    }
    if (set_option(cfg, opts[idx].name, optarg ? optarg : "1") != 0) {
      fprintf(stderr, "psd: invalid value '%s' for --%s (see psd --help)\n", optarg ? optarg : "",
              opts[idx].name);
      return 2;
    }
  }
  if (optind < argc) {
    fprintf(stderr, "psd: unexpected argument '%s' (see psd --help)\n", argv[optind]);
    return 2;
  }
  if (cfg->default_block > (cfg->max_frame - PSW_HEAD_MAX) / sizeof(float)) {
    fprintf(stderr, "psd: --block-size %llu floats does not fit --max-frame %llu bytes\n",
            (unsigned long long)cfg->default_block, (unsigned long long)cfg->max_frame);
    return 2;
  }
  if (cfg->servers[0] && cfg->index < 0) {
    fprintf(stderr, "psd: --servers needs --index N (PSD_INDEX): which entry is this shard\n");
    return 2;
  }
  if (!cfg->servers[0] && cfg->index >= 0) {
    fprintf(stderr, "psd: --index needs --servers LIST (PSD_SERVERS)\n");
    return 2;
  }
  plog_set_tag("psd");
  char why[160];
  uint64_t dflt = mem_default_limit(why, sizeof(why));
  if (cfg->max_memory == 0) {
    cfg->max_memory = dflt;
    log_info("memory ceiling %llu bytes: %s (--max-memory)", (unsigned long long)dflt, why);
  } else {
    log_info("memory ceiling %llu bytes (--max-memory)", (unsigned long long)cfg->max_memory);
  }
  mem_set_limit(cfg->max_memory);
  /* Every connection takes a descriptor (two with a lane); the listener,
   * the loop, stdio, checkpoints and the reserve descriptor take a few. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    uint64_t fit = rl.rlim_cur > 32 ? (uint64_t)rl.rlim_cur - 32 : 1;
    if (cfg->max_clients > fit && !cfg->max_clients_set) {
      log_info("max-clients lowered from %llu to %llu to fit the file descriptor limit (%llu)",
               (unsigned long long)cfg->max_clients, (unsigned long long)fit,
               (unsigned long long)rl.rlim_cur);
      cfg->max_clients = fit;
    } else if (cfg->max_clients > fit) {
      log_warn("--max-clients %llu is more than the file descriptor limit (%llu) allows; "
               "connections past it are accepted and closed at once",
               (unsigned long long)cfg->max_clients, (unsigned long long)rl.rlim_cur);
    }
  }
  log_info("limits: max-clients %llu, out-cap %llu, max-frame %llu, frame-timeout %s s, "
           "hello-timeout %s s, idle-timeout %s s",
           (unsigned long long)cfg->max_clients, (unsigned long long)cfg->out_cap,
           (unsigned long long)cfg->max_frame, psn_num(cfg->frame_timeout).s,
           psn_num(cfg->hello_timeout).s, psn_num(cfg->idle_timeout).s);
  if (psa_init() != 0) {
    log_error("libsodium could not be initialized");
    return 1;
  }
  {
    char err[600];
    if (auth_load_tokens(cfg, err, sizeof(err)) != 0) {
      fprintf(stderr, "psd: %s\n", err);
      return 2;
    }
  }
  if (cfg->metrics_auth) {
    if (!cfg->metrics_listen[0]) {
      fprintf(stderr, "psd: --metrics-auth without --metrics-listen: no endpoint to protect\n");
      return 2;
    }
    if (cfg->token_len[PSA_READER] == 0) {
      fprintf(stderr, "psd: --metrics-auth needs the reader token (--token-file reader=PATH)\n");
      return 2;
    }
    metrics_set_token(cfg->token[PSA_READER], cfg->token_len[PSA_READER]);
  }
  signal(SIGPIPE, SIG_IGN);
  /* Replies that the socket does not take at once are copied into buffers
   * of up to a block (1 MiB+). glibc would mmap and munmap each of them,
   * paying page faults on every reply; keep them in the heap instead. */
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 512 << 20);

  srv->loop = uv_default_loop();
  srv->start_ms = psd_now_ms();
  psd_link_init(&srv->jobs);
  outbox_init(&srv->outbox);
  psd_link_init(&srv->ckpt_waiters);
  psd_link_init(&srv->growing);
  psd_link_init(&srv->woken);
  psd_link_init(&srv->ckpt_inflight);
  if (cfg->data_dir[0] && ckpt_restore(srv) != 0) {
    state_free(srv);
    return 1;
  }
  if (identity_from_config(srv) != 0) {
    state_free(srv);
    return 1;
  }
  /* After the restore, which may fill the whole ceiling (what a shard held
   * comes back; only growth keeps the reserve free). */
  mem_set_reserve(mem_default_reserve(cfg->max_memory, cfg->max_frame));
  log_info("new blocks, tensors, table rows and lanes stop %llu bytes below the memory "
           "ceiling: a full shard still serves what it holds",
           (unsigned long long)mem_reserve());
  /* Before the listener: a SIGTERM sent as soon as psd says it listens is
   * a clean stop, not the default action. */
  uv_signal_init(srv->loop, &srv->sigint);
  uv_signal_init(srv->loop, &srv->sigterm);
  srv->sigint.data = srv->sigterm.data = srv;
  uv_signal_start(&srv->sigint, on_signal, SIGINT);
  uv_signal_start(&srv->sigterm, on_signal, SIGTERM);
  if (server_start(srv) != 0) {
    state_free(srv);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_run(srv->loop, UV_RUN_NOWAIT);
    uv_loop_close(srv->loop);
    return 1;
  }
  if (metrics_start(srv) != 0) {
    /* The shard's listener is open: stop it as SIGTERM would. */
    srv->stopping = 1;
    server_stop(srv);
    uv_close((uv_handle_t *)&srv->sigint, NULL);
    uv_close((uv_handle_t *)&srv->sigterm, NULL);
    uv_run(srv->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&srv->stop_timer, NULL);
    uv_run(srv->loop, UV_RUN_DEFAULT);
    state_free(srv);
    uv_loop_close(srv->loop);
    return 1;
  }
  ckpt_start(srv);
  if (spare_start() == 0) {
    psw_rbuf_spares(spare_take, spare_want, spare_give);
    mem_set_reclaim(spare_reclaim);
  }
  else
    log_warn("cannot start the spare-buffer thread; fresh memory is faulted in on the loop");
  if (cfg->update_threads > 1 && (srv->helper = helper_start()) == NULL)
    log_warn("cannot start the update helper thread; updates run on one thread");

  uv_run(srv->loop, UV_RUN_DEFAULT);
  /* The shutdown timer is unreferenced: close it if it did not fire. */
  if (srv->stopping && !uv_is_closing((uv_handle_t *)&srv->stop_timer)) {
    uv_close((uv_handle_t *)&srv->stop_timer, NULL);
    uv_run(srv->loop, UV_RUN_DEFAULT);
  }

  int rc = 0;
  if (cfg->data_dir[0] && ckpt_write_now(srv) != 0) rc = 1;
  helper_stop(srv->helper);
  spare_stop();
  state_free(srv);
  if (uv_loop_close(srv->loop) != 0) {
    log_warn("event loop still had open handles at exit");
  }
  log_info("stopped");
  return rc;
}
