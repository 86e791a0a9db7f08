package console

import "github.com/duet-dm/duet/pkg/store"

// registerOps registers the operations pages: task batches from the
// device list, tasks and batches, the settings page, held USP agents,
// the user's own password, the device page's extras, the overview's
// charts.
func (c *Console) registerOps() {
	c.route("GET /batches/new", store.RoleOperator, c.newBatch)
	c.route("POST /batches/confirm", store.RoleOperator, c.confirmBatch)
	c.route("POST /batches", store.RoleOperator, c.createBatch)
	c.route("GET /batches", store.RoleViewer, c.batches)
	c.route("GET /batches/{id}", store.RoleViewer, c.batch)
	c.route("POST /batches/{id}/cancel", store.RoleOperator, c.cancelBatch)
	c.route("GET /tasks", store.RoleViewer, c.tasks)
	c.route("GET /tasks/{id}", store.RoleViewer, c.task)
	c.route("POST /tasks/{id}/cancel", store.RoleOperator, c.cancelTask)
	c.route("POST /tasks/{id}/retry", store.RoleOperator, c.retryTask)
	c.route("GET /settings", store.RoleViewer, c.settings)
	c.route("GET /overview/charts.json", store.RoleViewer, c.charts)
	c.route("GET /agents", store.RoleViewer, c.heldAgents)
	c.route("POST /agents/{eid}/approve", admissionRole, c.decideAgent(true))
	c.route("POST /agents/{eid}/reject", admissionRole, c.decideAgent(false))
	c.route("POST /devices/{id}/action", store.RoleOperator, c.deviceAction)
	c.route("POST /devices/{id}/credentials", credentialsRole, c.putCredentials)
	c.route("POST /devices/{id}/credentials/delete", credentialsRole, c.deleteCredentials)
	c.route("GET /devices/{id}/events", store.RoleViewer, c.deviceEvents)
	c.route("GET /live/devices/{id}/events", store.RoleViewer, c.deviceEventsLive)
	c.route("GET /account/password", store.RoleViewer, c.passwordPage)
	c.route("POST /account/password", store.RoleViewer, c.changePassword)
}
