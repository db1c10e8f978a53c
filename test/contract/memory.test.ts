import { MemoryStore } from '../../src/store/memory.js';
import { describeLedgerStore } from './ledger-store.contract.js';

describeLedgerStore('memory', async () => new MemoryStore());
