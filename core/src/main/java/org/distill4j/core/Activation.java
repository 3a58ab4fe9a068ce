package org.distill4j.core;

/** Pointwise activations, defined as PyTorch defines them. */
public enum Activation {
    /** max(x, 0). */
    RELU,
    /** x for x > 0, slope * x otherwise (slope is the op's parameter; PyTorch's default 0.01). */
    LEAKY_RELU,
    /** x * Phi(x), exact (erf). */
    GELU,
    /** 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))): PyTorch's approximate="tanh". */
    GELU_TANH,
    TANH,
    SIGMOID
}
