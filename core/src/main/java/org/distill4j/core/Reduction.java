package org.distill4j.core;

/** Reductions over rows or columns of a [rows, cols] matrix. */
public enum Reduction { SUM, MEAN, MAX }
