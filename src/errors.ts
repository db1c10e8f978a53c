/**
 * Thrown for input a human must fix (environment, flags, files). Its message names the input and
 * shows a value that works; the CLI prints it alone, without a stack trace.
 */
export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** The ledger store cannot be opened or reached; the message names STORE_URL and what to check. */
export class StoreUnavailableError extends Error {
  override name = 'StoreUnavailableError';
}

/**
 * The store refused a batch because of what one of its messages holds (PostgreSQL SQLSTATE class
 * 21/22/23, a total past what the store keeps exactly, text no store can keep faithfully), not
 * because it is down: retrying the same batch fails again. `Pipeline.ingest` splits the batch to
 * find the message at fault and makes only that one `invalid`; an outage is any other error.
 */
export class StoreDataError extends Error {
  override name = 'StoreDataError';
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}
