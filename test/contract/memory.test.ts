import { MemoryStore } from '../../src/store/memory.js';
import { describeLedgerStore } from './ledger-store.contract.js';
import { describeAdmissionStore } from './admission.contract.js';

describeLedgerStore('memory', async () => new MemoryStore());
describeAdmissionStore('memory', async () => new MemoryStore());
