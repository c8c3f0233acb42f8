/* The control journal: what every command did, as the control file reads
 * it.  This mount's ring of the last JOURNAL_LEN lines and, in store mode,
 * the store's own journal (every mount's commands, kept across remounts). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "escape.h"
#include "stellafs.h"
#include "util.h"

/* The list of commands is command.c's, as its usage line says it. */
static const char journal_head[] =
	"# commands: " COMMAND_SYNOPSIS_1 "\n"
	"#           " COMMAND_SYNOPSIS_2 "\n"
	"# time uid command -> result, oldest first\n";

/* Store mode: the store's journal (every mount's commands, kept across
 * remounts), then this mount's lines the store could not take (store.db
 * locked past its busy timeout, a full disk), or all of them when the
 * store's journal cannot be read: a result is never lost from what an
 * operator reads.  Direct mode: this mount's ring. */
char *journal_text(struct stellafs *sf, size_t *len)
{
	char *stored = sf->store ? store_journal_text(sf->store, JOURNAL_LEN) : NULL;
	size_t sl = stored ? strlen(stored) : 0;
	size_t cap = sizeof(journal_head) + sl + JOURNAL_LEN * 900;
	char *out = malloc(cap);
	if (!out) {
		free(stored);
		return NULL;
	}
	size_t n = sizeof(journal_head) - 1;
	memcpy(out, journal_head, n);
	memcpy(out + n, stored ? stored : "", sl + 1);
	n += sl;
	pthread_mutex_lock(&sf->journal.lock);
	for (unsigned i = 0; i < sf->journal.n; i++) {
		const struct journal_entry *j = &sf->journal.ring[(sf->journal.next + JOURNAL_LEN - sf->journal.n + i) % JOURNAL_LEN];
		if (stored && !j->unsaved)
			continue;
		char t[32];
		time_format(j->when, t);
		n += (size_t)snprintf(out + n, cap - n, "%s uid=%u %s -> %s%s%s\n", t, (unsigned)j->uid, j->cmd,
				      j->err ? strerrorname_np(j->err) : "ok", j->result[0] ? ": " : "", j->result);
		if (n >= cap)
			n = cap - 1;
	}
	pthread_mutex_unlock(&sf->journal.lock);
	free(stored);
	*len = n;
	return out;
}

void journal_add(struct stellafs *sf, uid_t uid, const char *raw_cmd, int err, const char *raw_result)
{
	/* Escaped here, where every line enters: a command or result holds
	 * untrusted text (a dropped kit's file name, a manifest's version, a
	 * path), and a newline in it would add a forged line to what everyone
	 * reads.  The store's journal gets the same escaped text. */
	char cmd[sizeof(sf->journal.ring[0].cmd)], result[sizeof(sf->journal.ring[0].result)];
	escape(raw_cmd, ESCAPE_TEXT, cmd, sizeof(cmd));
	escape(raw_result, ESCAPE_TEXT, result, sizeof(result));
	bool unsaved = sf->store && store_journal_add(sf->store, sf_now(sf), (unsigned)uid, cmd, err, result) < 0;
	pthread_mutex_lock(&sf->journal.lock);
	struct journal_entry *j = &sf->journal.ring[sf->journal.next];
	j->unsaved = unsaved;
	j->when = sf_now(sf);
	j->uid = uid;
	snprintf(j->cmd, sizeof(j->cmd), "%s", cmd);
	j->err = err;
	snprintf(j->result, sizeof(j->result), "%s", result);
	sf->journal.next = (sf->journal.next + 1) % JOURNAL_LEN;
	if (sf->journal.n < JOURNAL_LEN)
		sf->journal.n++;
	pthread_mutex_unlock(&sf->journal.lock);
}
