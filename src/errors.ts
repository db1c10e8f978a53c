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
