import { pino, type Logger } from 'pino';

/**
 * Structured logs on stdout. Call sites log decisions and identifiers only: never request bodies,
 * images, embeddings, API keys or capture tokens (request lines carry the path without its query).
 */
export function createLogger(level: string): Logger {
  return pino({
    level,
    base: { service: 'authface' },
    redact: { paths: ['*.authorization', '*.headers', '*.token', '*.apiKey', '*.api_key', '*.embedding'], censor: '[redacted]' },
  });
}

export type { Logger };
