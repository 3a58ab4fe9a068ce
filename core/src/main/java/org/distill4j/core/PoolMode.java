package org.distill4j.core;

public enum PoolMode { MAX, AVG }
