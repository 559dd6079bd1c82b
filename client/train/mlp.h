/*
 * mlp.h -- a multi-layer perceptron for psd-train: fully connected layers,
 * ReLU between them, softmax cross-entropy on top.
 *
 * This module knows nothing about psd: it owns weight and gradient buffers,
 * and it computes a forward and a backward pass on a minibatch with CBLAS.
 * The trainer decides where the weights come from (a parameter server) and
 * where the gradients go.
 *
 * Layout, chosen to match PyTorch so that a server computing fans "as torch
 * does" sees the right fans: layer l maps sizes[l] inputs to sizes[l+1]
 * outputs; its weight W is [out, in] row-major (element (o, i) at o*in + i)
 * and its bias b is [out]. A minibatch is [n, in] row-major.
 */
#ifndef PSD_TRAIN_MLP_H
#define PSD_TRAIN_MLP_H

#include <stddef.h>
#include <stdint.h>

/* The largest number of layer sizes (inputs + hidden + outputs) accepted. */
#define MLP_MAX_SIZES 16

typedef struct {
  int in, out;
  float *w;  /* [out, in] */
  float *b;  /* [out] */
  float *gw; /* gradient of the mean loss with respect to w, [out, in] */
  float *gb; /* gradient of the mean loss with respect to b, [out] */
} mlp_layer;

typedef struct {
  int nlayers;       /* number of weight layers = number of sizes - 1 */
  mlp_layer *layer;  /* nlayers entries */
  int max_batch;     /* rows the activation buffers hold */
  /* act[l] is layer l's output for the last forward pass, [n, out]: after
   * the ReLU for hidden layers, the raw logits for the last layer (the
   * softmax is applied where needed so the loss can use log-sum-exp). */
  float **act;
  float *delta[2];   /* backward scratch, [max_batch, widest layer] each */
  float *ones;       /* max_batch ones, to sum rows with a GEMV */
} mlp;

/* Parse "784,256,128,10" into sizes[0..*n). Every size must be in
 * [1, 1<<20] and there must be at least two. Returns 0, or -1 with a
 * sentence in err. */
int mlp_parse_sizes(const char *s, int *sizes, int max, int *n, char *err,
                    size_t errlen);

/* Allocate a network with the given layer sizes able to run minibatches of
 * up to max_batch rows. Weights and gradients start at zero: the caller
 * fills the weights (psd-train pulls them from the server; tests use
 * mlp_init_random). Returns 0, or -1 if memory ran out or the arguments are
 * invalid; on failure *m needs no mlp_free. */
int mlp_alloc(mlp *m, const int *sizes, int nsizes, int max_batch);
void mlp_free(mlp *m);

/* Fill the weights with He-normal values (the biases with zeros) from a
 * seeded generator. Only for tests and standalone use: in a psd job the
 * server initializes the tensors. */
void mlp_init_random(mlp *m, uint64_t seed);

/* Number of parameters (weights and biases) in the network. */
size_t mlp_num_params(const mlp *m);

/* Forward pass on x[0..n*sizes[0]), n <= max_batch. Leaves the logits in
 * mlp_logits(m). */
void mlp_forward(mlp *m, const float *x, int n);

/* The logits of the last forward pass, [n, classes] row-major. */
const float *mlp_logits(const mlp *m);
int mlp_classes(const mlp *m);

/* Softmax of one row of k logits into p, computed as exp(z - max) / sum so
 * that large logits cannot overflow. p may equal z. */
void mlp_softmax(const float *z, float *p, int k);

/* Mean cross-entropy of the last forward pass against labels[0..n), each
 * in [0, classes): -log softmax(z)_y computed as logsumexp(z) - z_y in
 * double, finite for any finite logits. *correct (may be NULL) receives
 * how many rows have their largest logit at the label. */
double mlp_loss(const mlp *m, const uint8_t *labels, int n, int *correct);

/* Called by mlp_backward once layer l's gradients are final and its weights
 * are no longer read by the pass, so the caller may hand both to someone
 * else (psd-train starts pushing layer l while layer l-1 is computed). */
typedef void (*mlp_layer_done_fn)(mlp *m, int l, void *arg);

/* Backward pass for the loss mlp_loss() computes (the minibatch mean), on
 * the same x and n as the last mlp_forward(): fills every layer's gw and gb.
 * Layers are finished from the last to the first; done (may be NULL) is
 * called after each. */
void mlp_backward(mlp *m, const float *x, const uint8_t *labels, int n,
                  mlp_layer_done_fn done, void *arg);

/* mlp_backward, and also the gradient of the mean loss with respect to the
 * input x into dx[n, sizes[0]] (dx may be NULL: not computed), for a layer
 * below the network that is not part of it (psd-train's embedding bag).
 * dx is final before done is called for layer 0. */
void mlp_backward_dx(mlp *m, const float *x, const uint8_t *labels, int n,
                     float *dx, mlp_layer_done_fn done, void *arg);

/* Forward over a whole dataset x[count, sizes[0]] in chunks of max_batch
 * rows; returns the fraction classified correctly and, if loss is not
 * NULL, the mean cross-entropy. */
double mlp_evaluate(mlp *m, const float *x, const uint8_t *labels, int count,
                    double *loss);

#endif /* PSD_TRAIN_MLP_H */
