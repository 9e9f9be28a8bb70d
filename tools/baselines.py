"""Reference trainers for the sparse MLP training step, written the way most people would.

Two baselines train the same network with the same algorithm as wasap (Erdős–Rényi topology, He-uniform
init, All-ReLU, inverted dropout, softmax + cross-entropy, momentum SGD with weight decay) but with the
two common off-the-shelf representations of a sparse layer:

- :class:`DenseMaskMLP`: dense float32 weight matrices times a binary mask. Every product is a dense
  BLAS matmul, so the cost does not shrink with the sparsity.
- :class:`ScipySparseMLP`: ``scipy.sparse`` CSR weights. The forward and backward products are sparse;
  the weight gradient is gathered only at the nonzeros with vectorised numpy.

They exist to put wasap's speed in context (``tools/bench.py``) and are checked against each other and
against finite differences in ``tests/test_baselines.py``. Both draw every random number (topology,
init, dropout, shuffling) from one ``numpy.random.default_rng(seed)`` in the same order, so two
instances with the same arguments train exactly the same network.
"""

import numpy as np
import scipy.sparse

# Nonzeros per chunk in the sampled gradient: two (chunk, batch) float32 gathers of 4096 x 128 take
# 4 MiB together, small enough to stay in cache between the gather and the reduction; gathering all
# nonzeros at once builds two (nnz, batch) arrays of 20 MiB each for a 1000 x 1000 layer at epsilon 20.
_GRADIENT_CHUNK = 4096


def layer_density(n_in, n_out, epsilon):
    """Erdős–Rényi density of an ``n_in x n_out`` layer: ``epsilon * (n_in + n_out) / (n_in * n_out)``.

    Parameters
    ----------
    n_in, n_out : int
        Number of input and output neurons.
    epsilon : float
        Sparsity parameter of SET: the layer gets about ``epsilon * (n_in + n_out)`` connections.

    Returns
    -------
    float
        Fraction of the ``n_in * n_out`` possible connections that exist, capped at 1.
    """
    return min(1.0, epsilon * (n_in + n_out) / (n_in * n_out))


def erdos_renyi_layer(n_in, n_out, epsilon, rng):
    """Draw one layer's topology and He-uniform initial values.

    Parameters
    ----------
    n_in, n_out : int
        Number of input and output neurons.
    epsilon : float
        Sparsity parameter, see :func:`layer_density`.
    rng : numpy.random.Generator
        Source of the positions and the values.

    Returns
    -------
    rows, cols : ndarray of int32, shape (nnz,)
        Input and output neuron of each connection, sorted row-major (CSR order), without repeats.
    values : ndarray of float32, shape (nnz,)
        Initial weights, uniform in ``[-sqrt(6 / n_in), sqrt(6 / n_in)]``.
    """
    nnz = int(round(layer_density(n_in, n_out, epsilon) * n_in * n_out))
    positions = np.sort(rng.choice(n_in * n_out, size=nnz, replace=False))
    rows = (positions // n_out).astype(np.int32)
    cols = (positions % n_out).astype(np.int32)
    limit = np.sqrt(6.0 / n_in)
    values = rng.uniform(-limit, limit, size=nnz).astype(np.float32)
    return rows, cols, values


def all_relu_slopes(n_hidden, alpha):
    """Negative-side slopes of All-ReLU for each hidden layer: ``-alpha, +alpha, -alpha, ...``.

    Parameters
    ----------
    n_hidden : int
        Number of hidden layers.
    alpha : float
        Slope magnitude.

    Returns
    -------
    list of numpy.float32, length n_hidden
    """
    return [np.float32(-alpha if i % 2 == 0 else alpha) for i in range(n_hidden)]


def make_fashion_shape_data(n_samples=60000, n_features=784, n_classes=10, seed=0):
    """Random data of the Fashion-MNIST training set's shape, for timing.

    Parameters
    ----------
    n_samples, n_features, n_classes : int
        Shape of the data set.
    seed : int
        Seed of ``numpy.random.default_rng``.

    Returns
    -------
    X : ndarray of float32, shape (n_samples, n_features)
        Standard normal features.
    y : ndarray of int64, shape (n_samples,)
        Class indices, uniform in ``[0, n_classes)``.
    """
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_samples, n_features), dtype=np.float32)
    y = rng.integers(0, n_classes, size=n_samples, dtype=np.int64)
    return X, y


class _BaselineMLP:
    """The training step shared by both baselines; subclasses supply the weight representation.

    A subclass implements ``_build`` (which sets ``self.weights`` and the weights' momentum buffers
    ``self.velocities``), ``_forward_product``
    (``a @ W``), ``_backward_product`` (``delta @ W.T``), ``_weight_gradient`` and ``_update_weights``.
    Everything else (activations, dropout, loss, biases, random streams) is this class, so the two
    baselines differ only where their representations do.
    """

    def __init__(self, sizes, *, epsilon=20, alpha=0.6, dropout=0.3, lr=0.01, momentum=0.9,
                 weight_decay=2e-4, seed=0):
        self.sizes = list(sizes)
        self.dropout = dropout
        self.lr = np.float32(lr)
        self.momentum = np.float32(momentum)
        self.weight_decay = np.float32(weight_decay)
        self.rng = np.random.default_rng(seed)
        self.slopes = all_relu_slopes(len(self.sizes) - 2, alpha)
        self._build([(n_in, n_out) + erdos_renyi_layer(n_in, n_out, epsilon, self.rng)
                     for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])])
        self.biases = [np.zeros(n, dtype=np.float32) for n in self.sizes[1:]]
        self.bias_velocities = [np.zeros(n, dtype=np.float32) for n in self.sizes[1:]]

    def loss_and_gradients(self, X, Y_onehot):
        """Forward and backward pass over one mini-batch, without updating anything.

        Dropout masks are drawn from the model's generator, so a call advances it.

        Parameters
        ----------
        X : ndarray of float32, shape (B, n_in)
            Inputs.
        Y_onehot : ndarray of float32, shape (B, n_classes)
            One-hot targets.

        Returns
        -------
        loss : float
            Mean cross-entropy over the batch.
        weight_grads : list of ndarray of float32
            Gradient of the loss for each layer, in the layer's representation (see the subclass).
        bias_grads : list of ndarray of float32, shapes (n_out,)
            Gradient of the loss for each layer's biases.
        """
        batch = X.shape[0]
        keep = np.float32(1.0 - self.dropout)
        activations = [X]
        # f'(z) times the dropout mask, per hidden layer: all backward needs of the forward pass.
        local_grads = []
        a = X
        for layer, slope in enumerate(self.slopes):
            z = self._forward_product(layer, a)
            z += self.biases[layer]
            # All-ReLU is piecewise linear, so f(z) = z * f'(z) with f'(z) = 1 (z > 0) or slope.
            d = np.where(z > 0, np.float32(1.0), slope)
            if self.dropout > 0:
                d *= (self.rng.random(z.shape, dtype=np.float32) < keep) / keep
            a = z * d
            activations.append(a)
            local_grads.append(d)
        z = self._forward_product(len(self.slopes), a)
        z += self.biases[-1]
        z -= z.max(axis=1, keepdims=True)  # stable softmax
        exp_z = np.exp(z)
        sum_exp = exp_z.sum(axis=1, keepdims=True)
        log_p = z - np.log(sum_exp)
        loss = float(-(Y_onehot * log_p).sum() / batch)
        delta = (exp_z / sum_exp - Y_onehot) / np.float32(batch)

        n_layers = len(self.weights)
        weight_grads = [None] * n_layers
        bias_grads = [None] * n_layers
        for layer in range(n_layers - 1, -1, -1):
            weight_grads[layer] = self._weight_gradient(layer, activations[layer], delta)
            bias_grads[layer] = delta.sum(axis=0)
            if layer > 0:
                delta = self._backward_product(layer, delta) * local_grads[layer - 1]
        return loss, weight_grads, bias_grads

    def train_batch(self, X, Y_onehot):
        """One momentum-SGD step on one mini-batch.

        Weights: ``v = mu * v - lr * (g + wd * w); w += v``. Biases: the same without weight decay.

        Parameters
        ----------
        X : ndarray of float32, shape (B, n_in)
            Inputs.
        Y_onehot : ndarray of float32, shape (B, n_classes)
            One-hot targets.

        Returns
        -------
        float
            Mean cross-entropy over the batch, before the step.
        """
        loss, weight_grads, bias_grads = self.loss_and_gradients(X, Y_onehot)
        for layer, (g, gb) in enumerate(zip(weight_grads, bias_grads)):
            self._update_weights(layer, g)
            v = self.bias_velocities[layer]
            v *= self.momentum
            v -= self.lr * gb
            self.biases[layer] += v
        return loss

    def train_epoch(self, X, y, batch_size=128):
        """One pass over the data in shuffled mini-batches.

        Parameters
        ----------
        X : ndarray of float32, shape (n_samples, n_in)
            Inputs.
        y : ndarray of int, shape (n_samples,)
            Class indices.
        batch_size : int
            Samples per step; the last batch holds the remainder.

        Returns
        -------
        float
            Mean cross-entropy over the samples.
        """
        n = X.shape[0]
        order = self.rng.permutation(n)
        eye = np.eye(self.sizes[-1], dtype=np.float32)
        total = 0.0
        for start in range(0, n, batch_size):
            batch = order[start:start + batch_size]
            total += self.train_batch(X[batch], eye[y[batch]]) * len(batch)
        return total / n


class DenseMaskMLP(_BaselineMLP):
    """Sparse MLP simulated with dense weights times a binary mask.

    ``self.weights[l]`` is a dense float32 array of shape (n_in, n_out) that is zero outside
    ``self.masks[l]``; the mask is re-applied to the gradient and to the weights after every update,
    the usual way to train a sparse topology in a dense framework. Weight gradients from
    :meth:`loss_and_gradients` are dense (n_in, n_out) arrays, zero outside the mask.

    Parameters
    ----------
    sizes : list of int
        Neurons per layer, input first, classes last.
    epsilon, alpha, dropout, lr, momentum, weight_decay, seed
        See the module docstring; defaults as the paper's code.
    """

    def _build(self, layers):
        self.weights, self.masks, self.velocities = [], [], []
        for n_in, n_out, rows, cols, values in layers:
            weight = np.zeros((n_in, n_out), dtype=np.float32)
            weight[rows, cols] = values
            mask = np.zeros((n_in, n_out), dtype=np.float32)
            mask[rows, cols] = 1.0
            self.weights.append(weight)
            self.masks.append(mask)
            self.velocities.append(np.zeros_like(weight))

    def _forward_product(self, layer, a):
        return a @ self.weights[layer]

    def _backward_product(self, layer, delta):
        return delta @ self.weights[layer].T

    def _weight_gradient(self, layer, a, delta):
        g = a.T @ delta
        g *= self.masks[layer]
        return g

    def _update_weights(self, layer, g):
        w, v = self.weights[layer], self.velocities[layer]
        v *= self.momentum
        v -= self.lr * (g + self.weight_decay * w)
        w += v
        # Redundant in exact arithmetic (g and w are zero outside the mask, so v stays zero there),
        # but it is what mask-based sparse training does, and it costs what it costs there.
        w *= self.masks[layer]

    @property
    def nnz(self):
        """int: Number of connections (mask entries) over all layers."""
        return int(sum(np.count_nonzero(m) for m in self.masks))


class ScipySparseMLP(_BaselineMLP):
    """Sparse MLP with ``scipy.sparse`` CSR weights.

    ``self.weights[l]`` is a float32 ``csr_matrix`` of shape (n_in, n_out). Forward is ``a @ W``,
    backward ``delta @ W.T`` (both sparse products in scipy's compiled code); the weight gradient is
    computed only at the nonzeros as ``g[k] = sum_b a[b, rows[k]] * delta[b, cols[k]]`` and the update
    works on ``W.data`` in place, so the topology never changes. Weight gradients from
    :meth:`loss_and_gradients` are (nnz,) arrays in ``W.data`` order.

    Parameters
    ----------
    sizes : list of int
        Neurons per layer, input first, classes last.
    epsilon, alpha, dropout, lr, momentum, weight_decay, seed
        See the module docstring; defaults as the paper's code.
    """

    def _build(self, layers):
        self.weights, self.rows, self.velocities = [], [], []
        for n_in, n_out, rows, cols, values in layers:
            # Built from (data, indices, indptr) so scipy keeps exactly these nonzeros in this order.
            indptr = np.zeros(n_in + 1, dtype=np.int32)
            np.cumsum(np.bincount(rows, minlength=n_in), out=indptr[1:])
            self.weights.append(scipy.sparse.csr_matrix((values, cols, indptr), shape=(n_in, n_out)))
            self.rows.append(rows)
            self.velocities.append(np.zeros_like(values))

    def _forward_product(self, layer, a):
        return a @ self.weights[layer]

    def _backward_product(self, layer, delta):
        return delta @ self.weights[layer].T

    def _weight_gradient(self, layer, a, delta):
        # Transposed copies make each gathered neuron a contiguous run of B values (for the
        # (B, n) Fortran-ordered products scipy returns, the transpose is free).
        a_t = np.ascontiguousarray(a.T)
        delta_t = np.ascontiguousarray(delta.T)
        rows, cols = self.rows[layer], self.weights[layer].indices
        g = np.empty(len(rows), dtype=np.float32)
        for start in range(0, len(rows), _GRADIENT_CHUNK):
            part = slice(start, start + _GRADIENT_CHUNK)
            g[part] = np.einsum("kb,kb->k", a_t[rows[part]], delta_t[cols[part]])
        return g

    def _update_weights(self, layer, g):
        w, v = self.weights[layer].data, self.velocities[layer]
        v *= self.momentum
        v -= self.lr * (g + self.weight_decay * w)
        w += v

    @property
    def nnz(self):
        """int: Number of stored connections over all layers."""
        return int(sum(w.nnz for w in self.weights))
